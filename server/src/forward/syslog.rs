//! Syslog sinks: RFC 5424 messages (see `audit_format::syslog`) over UDP (one datagram each,
//! RFC 5426), TCP (octet counting, RFC 6587: `LEN SP MESSAGE`) or TLS (RFC 5425, the same
//! framing). A batch counts as delivered once it is written and flushed to the connection (TCP,
//! TLS) or handed to the network (UDP, which cannot tell whether anything arrived).

use std::pin::Pin;
use std::time::Duration;

use audit_format::syslog::{self, Facility, SyslogOptions};
use futures::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

use super::cursor::{Sink, SinkError};
use super::item::Item;
use super::options::{Endpoint, Options};
use super::tls::Tls;
use crate::error::Error;

/// Options of the syslog sinks besides `format`/`template` (which give MSG).
pub const OPTIONS: &str = "facility, hostname, app_name, procid, enterprise, max_bytes";

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// How long connecting may take before it counts as a failure (and is retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing one batch may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which transport carries the messages.
pub enum Transport {
    /// UDP datagrams.
    Udp,
    /// Octet-counted TCP.
    Tcp,
    /// Octet-counted TLS.
    Tls(Tls),
}

/// A byte stream to the receiver.
trait Stream: AsyncRead + AsyncWrite + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Send + Sync> Stream for T {}

type Connection = Pin<Box<dyn Stream>>;

/// Sends entries to a syslog receiver.
pub struct SyslogSink {
    endpoint: Endpoint,
    transport: Transport,
    options: SyslogOptions,
    udp: Option<UdpSocket>,
    stream: Option<Connection>,
}

/// The message options of a syslog sink: `facility` (default `authpriv`), `hostname` (default
/// this machine's name), `app_name` (default `audit-server`), `procid` (default the server's
/// pid), `enterprise` (default 32473), `max_bytes` (default 2048 over UDP, 8192 otherwise).
pub fn message_options(
    options: &mut Options,
    msg: audit_format::Format,
    udp: bool,
) -> Result<SyslogOptions, Error> {
    let facility = match options.take("facility")? {
        None => Facility::AUTHPRIV,
        Some(name) => {
            Facility::parse(&name).map_err(|e| options.error(format!("option `facility`: {e}")))?
        }
    };
    let hostname = match options.take("hostname")? {
        Some(name) => name,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    };
    let max_bytes = options.parse("max_bytes", if udp { 2048 } else { 8192 })?;
    if max_bytes < syslog::MIN_MAX_BYTES {
        return Err(options.error(format!(
            "option `max_bytes`: at least {} bytes",
            syslog::MIN_MAX_BYTES
        )));
    }
    if udp && max_bytes > MAX_DATAGRAM {
        return Err(options.error(format!(
            "option `max_bytes`: at most {MAX_DATAGRAM} bytes over UDP"
        )));
    }
    Ok(SyslogOptions {
        facility,
        hostname,
        app_name: options
            .take("app_name")?
            .unwrap_or_else(|| "audit-server".into()),
        procid: options
            .take("procid")?
            .unwrap_or_else(|| std::process::id().to_string()),
        enterprise: options.parse("enterprise", syslog::DEFAULT_ENTERPRISE)?,
        msg,
        max_bytes,
    })
}

impl SyslogSink {
    /// A sink to `endpoint` over `transport`; it connects when it first sends.
    pub fn new(endpoint: Endpoint, transport: Transport, options: SyslogOptions) -> Self {
        Self {
            endpoint,
            transport,
            options,
            udp: None,
            stream: None,
        }
    }

    fn message(&self, item: &Item) -> String {
        match item {
            Item::Entry(entry) => syslog::entry_message(entry, &self.options),
            Item::Checkpoint(checkpoint) => {
                let time = time::OffsetDateTime::from_unix_timestamp(checkpoint.time as i64).ok();
                syslog::checkpoint_message(checkpoint.index, &checkpoint.note, time, &self.options)
            }
        }
    }

    async fn send_udp(&mut self, items: &[Item]) -> Result<(), SinkError> {
        if self.udp.is_none() {
            let local = if self.endpoint.host.contains(':') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let socket = UdpSocket::bind(local).await.map_err(SinkError::retry)?;
            socket
                .connect(self.endpoint.authority())
                .await
                .map_err(|e| SinkError::retry(format!("{}: {e}", self.endpoint.authority())))?;
            self.udp = Some(socket);
        }
        for item in items {
            let message = self.message(item);
            let socket = self.udp.as_ref().expect("bound above");
            if let Err(error) = socket.send(message.as_bytes()).await {
                self.udp = None;
                return Err(SinkError::retry(format!(
                    "{}: {error}",
                    self.endpoint.authority()
                )));
            }
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Connection, SinkError> {
        let address = self.endpoint.authority();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address))
            .await
            .map_err(|_| SinkError::retry(format!("{address}: connect timed out")))?
            .map_err(|e| SinkError::retry(format!("{address}: {e}")))?;
        tcp.set_nodelay(true).map_err(SinkError::retry)?;
        match &self.transport {
            Transport::Tls(tls) => {
                let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                    .await
                    .map_err(|_| SinkError::retry(format!("{address}: TLS handshake timed out")))?
                    .map_err(|e| SinkError::retry(format!("{address}: TLS: {e}")))?;
                Ok(Box::pin(stream))
            }
            _ => Ok(Box::pin(tcp)),
        }
    }

    async fn send_stream(&mut self, items: &[Item]) -> Result<(), SinkError> {
        let mut frames = Vec::with_capacity(items.len() * 512);
        for item in items {
            let message = self.message(item);
            frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
            frames.extend_from_slice(message.as_bytes());
        }
        let mut stream = match self.stream.take() {
            // A syslog receiver never writes: a readable connection is one it closed (or one
            // that failed), so what is written now would be lost. Connect again instead.
            Some(mut stream) => match stream.read(&mut [0; 64]).now_or_never() {
                None => stream,
                Some(_) => self.connect().await?,
            },
            None => self.connect().await?,
        };
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(&frames).await?;
            stream.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                self.stream = Some(stream);
                Ok(())
            }
            Ok(Err(error)) => Err(SinkError::retry(format!(
                "{}: {error}",
                self.endpoint.authority()
            ))),
            Err(_) => Err(SinkError::retry(format!(
                "{}: write timed out",
                self.endpoint.authority()
            ))),
        }
    }
}

impl Sink for SyslogSink {
    async fn send(&mut self, items: &[Item]) -> Result<(), SinkError> {
        match self.transport {
            Transport::Udp => self.send_udp(items).await,
            Transport::Tcp | Transport::Tls(_) => self.send_stream(items).await,
        }
    }
}
