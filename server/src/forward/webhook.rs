//! Webhook sinks: each batch is one HTTP(S) POST, a JSON array (`body=array`, the default) or
//! JSON lines (`body=ndjson`). A 2xx answer acknowledges the batch. 408, 429, 5xx, timeouts and
//! connection errors are retried (honouring `Retry-After` in seconds); any other answer halts
//! the forwarder, so that no entry is skipped.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::cursor::{Sink, SinkError};
use super::item::{Encoding, Item};
use super::options::{Endpoint, Options};
use super::tls::Tls;
use crate::error::Error;

/// Options of the webhook sinks besides `format`/`template`.
pub const OPTIONS: &str =
    "body (array|ndjson), header (Name: value, repeatable), auth_file, auth_env, timeout";

/// Most bytes of an answer read (to reuse the connection, or to quote in an error).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How a batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// `[{…},{…}]`, `application/json`.
    Array,
    /// One JSON object per line, `application/x-ndjson`.
    Ndjson,
}

/// POSTs batches to a URL.
pub struct WebhookSink {
    endpoint: Endpoint,
    path: String,
    tls: Option<Tls>,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Body,
    encoding: Encoding,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl WebhookSink {
    /// A sink posting to `path` on `endpoint` (over TLS with `tls`), from its options.
    pub fn new(
        endpoint: Endpoint,
        path: String,
        tls: Option<Tls>,
        encoding: Encoding,
        options: &mut Options,
    ) -> Result<Self, Error> {
        let body = match options.take("body")?.as_deref() {
            None | Some("array") => Body::Array,
            Some("ndjson") => Body::Ndjson,
            Some(other) => {
                return Err(options.error(format!("option `body`: `{other}` (array or ndjson)")));
            }
        };
        let mut headers = Vec::new();
        for text in options.take_all("header") {
            let (name, value) = text.split_once(':').ok_or_else(|| {
                options.error(format!("option `header`: `{text}` is not `Name: value`"))
            })?;
            headers.push(header(options, name.trim(), value.trim())?);
        }
        if let Some(path) = options.take("auth_file")? {
            let token = std::fs::read_to_string(&path)
                .map_err(|e| options.error(format!("option `auth_file`: {path}: {e}")))?;
            headers.push(header(options, "authorization", token.trim())?);
        }
        if let Some(variable) = options.take("auth_env")? {
            let token = std::env::var(&variable).map_err(|_| {
                options.error(format!(
                    "option `auth_env`: variable `{variable}` is not set"
                ))
            })?;
            headers.push(header(options, "authorization", token.trim())?);
        }
        let timeout = options.duration("timeout", Duration::from_secs(10))?;
        Ok(Self {
            endpoint,
            path,
            tls,
            headers,
            body,
            encoding,
            timeout,
            sender: None,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SinkError> {
        let address = self.endpoint.authority();
        let fail = |what: String| SinkError::retry(format!("{address}: {what}"));
        let tcp = TcpStream::connect(&address)
            .await
            .map_err(|e| fail(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
        let sender = match &self.tls {
            None => {
                let (sender, connection) = http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                tokio::spawn(connection);
                sender
            }
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|e| fail(format!("TLS: {e}")))?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                tokio::spawn(connection);
                sender
            }
        };
        Ok(sender)
    }

    fn body(&self, items: &[Item]) -> (Bytes, &'static str) {
        let mut out = String::with_capacity(items.len() * 512);
        match self.body {
            Body::Array => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&self.encoding.json_line(item));
                }
                out.push(']');
                (Bytes::from(out), "application/json")
            }
            Body::Ndjson => {
                for item in items {
                    out.push_str(&self.encoding.json_line(item));
                    out.push('\n');
                }
                (Bytes::from(out), "application/x-ndjson")
            }
        }
    }

    async fn post(&mut self, items: &[Item]) -> Result<(), SinkError> {
        let (body, content_type) = self.body(items);
        let mut request = Request::post(&self.path)
            .header(header::HOST, self.endpoint.authority())
            .header(header::CONTENT_TYPE, content_type)
            .header(header::USER_AGENT, "audit-server")
            .body(Full::new(body))
            .map_err(|e| SinkError::Halt(format!("cannot build the request: {e}")))?;
        for (name, value) in &self.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let mut sender = match self.sender.take() {
            // A kept connection the receiver has closed is replaced.
            Some(mut sender) => match sender.ready().await {
                Ok(()) => sender,
                Err(_) => self.connect().await?,
            },
            None => self.connect().await?,
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| SinkError::retry(format!("{}: {e}", self.endpoint.authority())))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(|body| body.to_bytes());
        if answer.is_ok() {
            self.sender = Some(sender);
        }
        let quoted = || {
            let text = answer
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let text: String = text.chars().take(200).collect();
            audit_format::escape::escape(&text).into_owned()
        };
        if status.is_success() {
            Ok(())
        } else if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            Err(SinkError::Retry {
                message: format!("answered {status}: {}", quoted()),
                after: retry_after,
            })
        } else {
            Err(SinkError::Halt(format!("answered {status}: {}", quoted())))
        }
    }
}

fn header(options: &Options, name: &str, value: &str) -> Result<(HeaderName, HeaderValue), Error> {
    let name = HeaderName::try_from(name)
        .map_err(|_| options.error(format!("`{name}` is not a header name")))?;
    let mut value = HeaderValue::try_from(value).map_err(|_| {
        options.error(format!(
            "the value of header `{name}` is not a valid header value"
        ))
    })?;
    // Kept out of any debug output.
    value.set_sensitive(true);
    Ok((name, value))
}

impl Sink for WebhookSink {
    async fn send(&mut self, items: &[Item]) -> Result<(), SinkError> {
        match tokio::time::timeout(self.timeout, self.post(items)).await {
            Ok(result) => result,
            Err(_) => {
                self.sender = None;
                Err(SinkError::retry(format!(
                    "{}: no answer within {:?}",
                    self.endpoint.authority(),
                    self.timeout
                )))
            }
        }
    }
}
