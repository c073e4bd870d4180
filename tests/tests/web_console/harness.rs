//! A server with the web console on, and a small HTTP/1.0 client for it (the body of an
//! HTTP/1.0 answer ends with its connection, so no chunked decoding is needed).

use std::net::SocketAddr;
use std::process::Stdio;

use audit_client::Client;
use audit_tests::{PATIENCE, binary};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A running server with the web console on.
pub struct Console {
    _child: Child,
    grpc: String,
    /// The console's address.
    pub web: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Console {
    /// Starts a server with the console and `args`, in a fresh data directory.
    pub async fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, args).await
    }

    /// Starts a server with the console and `args`, keeping `dir` until it stops.
    pub async fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Self {
        let mut child = Command::new(binary("audit-server"))
            .args(["--listen", "127.0.0.1:0", "--web-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--checkpoint-interval", "1s"])
            .args(args)
            .env("AUDIT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start audit-server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut grpc, mut web) = (None, None);
        loop {
            let line = tokio::time::timeout(PATIENCE, lines.next_line())
                .await
                .expect("ready in time")
                .unwrap()
                .expect("audit-server exited before it was ready");
            if line == "audit-server ready" {
                break;
            }
            let what = line.strip_prefix("audit-server listening on ").unwrap();
            match what
                .strip_prefix("web http://")
                .or_else(|| what.strip_prefix("web https://"))
            {
                Some(address) => web = Some(address.parse().unwrap()),
                None => grpc = Some(format!("http://{what}")),
            }
        }
        Self {
            _child: child,
            grpc: grpc.expect("a gRPC listener"),
            web: web.expect("the web listener is printed"),
            _dir: dir,
        }
    }

    /// A gRPC client of the server.
    pub async fn client(&self) -> Client {
        Client::connect(self.grpc.clone()).await.unwrap()
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Answer {
        self.get_with(path, &[]).await
    }

    /// `GET path` over HTTP/1.0 (so the body ends with the connection) with extra headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut stream = self.send("GET", path, headers).await;
        let mut raw = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
            .await
            .expect("answered in time")
            .unwrap();
        Answer::parse(&raw)
    }

    /// Sends a request without a body; the answer is read from the stream.
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> TcpStream {
        let mut stream = TcpStream::connect(self.web).await.unwrap();
        let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", self.web);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    /// `GET path`, which must answer 200 with JSON.
    pub async fn json(&self, path: &str) -> Value {
        let answer = self.get(path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        serde_json::from_str(&answer.body).unwrap()
    }
}

/// An HTTP answer.
pub struct Answer {
    /// Its status code.
    pub status: u16,
    headers: Vec<(String, String)>,
    /// Its body.
    pub body: String,
}

impl Answer {
    /// Parses an HTTP/1.x answer.
    pub fn parse(raw: &[u8]) -> Self {
        let text = String::from_utf8(raw.to_vec()).expect("UTF-8 answer");
        let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        Self {
            status,
            headers,
            body: body.to_string(),
        }
    }

    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}
