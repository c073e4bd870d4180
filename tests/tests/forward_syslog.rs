//! The syslog forwarders against a real rsyslog (Debian's `rsyslog`, which `scripts/test`
//! installs), run as a plain process with its own configuration on loopback ports, writing the
//! fields it parsed out of each message to a file: over UDP, TCP (octet counting) and TLS (with
//! rsyslog's GnuTLS driver and certificates made here). The header fields and the structured
//! data must come back as sent, for values full of `"`, `\`, `]`, line breaks and non-ASCII.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use audit_client::render::escape;
use audit_tests::{PATIENCE, TestServer, entry, eventually, forwarder_position, prefilled};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// A running rsyslogd that writes what it receives to `out.log`.
struct Rsyslog {
    dir: TempDir,
    _child: Child,
    udp_port: u16,
    tcp_port: u16,
    tls_port: Option<u16>,
}

/// What rsyslog wrote for each message: its fields, tab-separated.
const TEMPLATE: &str = "%pri%\\t%timereported:::date-rfc3339%\\t%hostname%\\t%app-name%\\t%procid%\\t%msgid%\\t%structured-data%\\t%msg%\\n";

impl Rsyslog {
    /// Starts rsyslogd listening on UDP, TCP and, with `tls` (a CA, certificate and key in
    /// PEM files), TLS, all on 127.0.0.1.
    async fn start(tls: Option<(&Path, &Path, &Path)>) -> Rsyslog {
        Self::start_on(tls, 0).await
    }

    /// [`Rsyslog::start`] with its TCP input on `tcp_port` (0: any free port).
    async fn start_on(tls: Option<(&Path, &Path, &Path)>, tcp_port: u16) -> Rsyslog {
        let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("rsyslogd is installed (scripts/test installs Debian's rsyslog)");
        let dir = TempDir::new().unwrap();
        let d = dir.path().display();
        // rsyslog's imudp cannot report a port it picked: take a free one from the kernel.
        let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp" maxSessions="100")
template(name="fields" type="string" string="{TEMPLATE}")
ruleset(name="r") {{ action(type="omfile" file="{d}/out.log" template="fields") }}
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="r")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" listenPortFileName="{d}/tcp.port" ruleset="r")
"#
        );
        if let Some((ca, cert, key)) = tls {
            conf.push_str(&format!(
                r#"input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{d}/tls.port" ruleset="r"
  streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon"
  streamDriver.CAFile="{}" streamDriver.CertFile="{}" streamDriver.KeyFile="{}")
"#,
                ca.display(),
                cert.display(),
                key.display()
            ));
        }
        std::fs::write(dir.path().join("rsyslog.conf"), conf).unwrap();
        let child = Command::new(rsyslogd)
            .arg("-n")
            .arg("-f")
            .arg(dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.path().join("rsyslog.pid"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start rsyslogd");
        let port = |name: &str| {
            std::fs::read_to_string(dir.path().join(name))
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok())
        };
        // A fixed port is not written to the port file: it is ready once it takes connections.
        let fixed_ready =
            || tcp_port != 0 && std::net::TcpStream::connect(("127.0.0.1", tcp_port)).is_ok();
        eventually("rsyslogd listening", || {
            (port("tcp.port").is_some() || fixed_ready())
                && (tls.is_none() || port("tls.port").is_some())
        })
        .await;
        let tcp_port = port("tcp.port").unwrap_or(tcp_port);
        let tls_port = tls.and(port("tls.port"));
        let rsyslog = Rsyslog {
            dir,
            _child: child,
            udp_port,
            tcp_port,
            tls_port,
        };
        rsyslog.wait_for_udp().await;
        rsyslog
    }

    /// UDP has no handshake: send probes until rsyslog writes one.
    async fn wait_for_udp(&self) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !self.lines().iter().any(|l| l.contains("PROBE")) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "rsyslogd never read UDP"
            );
            socket
                .send_to(
                    b"<13>1 - - probe - PROBE - ready",
                    ("127.0.0.1", self.udp_port),
                )
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("out.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The messages from the audit server, parsed.
    fn messages(&self) -> Vec<Message> {
        self.lines()
            .iter()
            .filter(|l| !l.contains("PROBE"))
            .map(|l| Message::parse(l))
            .collect()
    }
}

/// The fields rsyslog parsed out of one message.
#[derive(Debug)]
struct Message {
    pri: u32,
    hostname: String,
    app_name: String,
    msgid: String,
    sd_id: String,
    params: Vec<(String, String)>,
    msg: String,
}

impl Message {
    fn parse(line: &str) -> Message {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 8, "{line}");
        let (sd_id, params) = parse_sd(fields[6]);
        Message {
            pri: fields[0].parse().unwrap(),
            hostname: fields[2].into(),
            app_name: fields[3].into(),
            msgid: fields[5].into(),
            sd_id,
            params,
            msg: fields[7].into(),
        }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One structured-data element, RFC 5424's escapes undone.
fn parse_sd(sd: &str) -> (String, Vec<(String, String)>) {
    let inner = sd
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("one element: {sd}"));
    let (id, mut rest) = inner.split_once(' ').unwrap_or((inner, ""));
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("a param in {rest}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    let (_, c) = chars.next().unwrap();
                    if !matches!(c, '"' | '\\' | ']') {
                        value.push('\\');
                    }
                    value.push(c);
                }
                Some((at, '"')) => break at,
                Some((_, c)) => value.push(c),
                None => panic!("unclosed value in {sd}"),
            }
        };
        params.push((name.to_string(), value));
        rest = after[end + 1..].trim_start_matches(' ');
    }
    (id.to_string(), params)
}

const HOSTILE: &str = "keys/\"q\" \\b] [x@1 a=\"b\"]\nnext line é 日本";

async fn forwards_to_rsyslog(scheme: &str, port: u16, rsyslog: &Rsyslog, extra: &str) {
    let forward =
        format!("siem={scheme}://127.0.0.1:{port}?facility=local3&hostname=audit-host{extra}");
    let server =
        TestServer::start_with_args(&["--forward", &forward, "--checkpoint-every-entries", "3"])
            .await;
    let client = server.client().await;
    for i in 0..6 {
        let level = if i == 0 {
            audit_client::pb::Level::Error
        } else {
            audit_client::pb::Level::Info
        };
        client
            .record(
                entry("kms", "/kms.v1.Keys/Delete")
                    .event("KEY_DELETED")
                    .level(level)
                    .resource(if i == 0 {
                        HOSTILE.to_string()
                    } else {
                        format!("keys/{i}")
                    })
                    .principal("alice")
                    .label("region", "eu\"]")
                    .build(),
            )
            .await
            .unwrap();
    }
    eventually("six entries and a checkpoint of 6 at rsyslog", || {
        let messages = rsyslog.messages();
        messages.iter().filter(|m| m.msgid == "KEY_DELETED").count() == 6
            && messages
                .iter()
                .any(|m| m.msgid == "CHECKPOINT" && m.param("size") == Some("6"))
    })
    .await;
    let messages = rsyslog.messages();
    let entries: Vec<&Message> = messages
        .iter()
        .filter(|m| m.msgid == "KEY_DELETED")
        .collect();
    let sequences: Vec<&str> = entries
        .iter()
        .map(|m| m.param("sequence").unwrap())
        .collect();
    assert_eq!(sequences, ["1", "2", "3", "4", "5", "6"]);
    let first = entries[0];
    // local3 (19) * 8 + error (3); then informational (6).
    assert_eq!(first.pri, 19 * 8 + 3);
    assert_eq!(entries[1].pri, 19 * 8 + 6);
    assert_eq!(first.hostname, "audit-host");
    assert_eq!(first.app_name, "audit-server");
    assert_eq!(first.sd_id, "audit@32473");
    assert_eq!(first.param("resource"), Some(escape(HOSTILE).as_ref()));
    assert_eq!(first.param("caller.principal"), Some("alice"));
    assert_eq!(first.param("labels"), Some(r#"{"region":"eu\\"]"}"#));
    assert!(first.param("id").is_some_and(|id| id.len() == 36));
    assert!(
        first
            .msg
            .contains("#1 SUCCESS OK alice /kms.v1.Keys/Delete"),
        "{}",
        first.msg
    );
    // Checkpoints: their own messages, after the entries they cover, with the signed note.
    for (i, message) in messages.iter().enumerate() {
        if message.msgid == "CHECKPOINT" {
            assert_eq!(message.sd_id, "checkpoint@32473");
            let size: usize = message.param("size").unwrap().parse().unwrap();
            let note = message.param("note").unwrap().replace("\\n", "\n");
            assert!(note.starts_with(&format!("audit-log\n{size}\n")), "{note}");
            let covered = messages[..i]
                .iter()
                .filter(|m| m.msgid == "KEY_DELETED")
                .count();
            assert!(
                covered >= size,
                "checkpoint of {size} after {covered} entries"
            );
        }
    }
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn udp_messages_reach_rsyslog_intact() {
    let rsyslog = Rsyslog::start(None).await;
    forwards_to_rsyslog("syslog+udp", rsyslog.udp_port, &rsyslog, "").await;
}

#[tokio::test]
async fn tcp_messages_reach_rsyslog_intact() {
    let rsyslog = Rsyslog::start(None).await;
    forwards_to_rsyslog("syslog+tcp", rsyslog.tcp_port, &rsyslog, "").await;
}

fn write_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "syslog test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn tls_messages_reach_rsyslog_with_the_certificate_verified() {
    let pki = TempDir::new().unwrap();
    let (ca, cert, key) = write_pki(pki.path());
    let rsyslog = Rsyslog::start(Some((&ca, &cert, &key))).await;
    let port = rsyslog.tls_port.expect("a TLS port");
    let extra = format!("&ca={}&server_name=localhost", ca.display());
    forwards_to_rsyslog("syslog+tls", port, &rsyslog, &extra).await;

    // A receiver whose certificate the CA did not sign gets nothing.
    let other = TempDir::new().unwrap();
    let (other_ca, _, _) = write_pki(other.path());
    let forward = format!(
        "siem=syslog+tls://127.0.0.1:{port}?ca={}&server_name=localhost",
        other_ca.display()
    );
    let before = rsyslog.messages().len();
    let server =
        TestServer::start_with_args(&["--forward", &forward, "--shutdown-grace", "1s"]).await;
    server
        .client()
        .await
        .record(entry("kms", "/kms.v1.Keys/Get").build())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rsyslog.messages().len(), before);
    assert_eq!(forwarder_position(&server.data_dir, "siem"), None);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn kill_9_while_forwarding_over_tcp_loses_nothing() {
    const TOTAL: u64 = 3000;
    let rsyslog = Rsyslog::start(None).await;
    let (data, data_dir) = prefilled(TOTAL).await;
    let forward = format!("siem=syslog+tcp://127.0.0.1:{}?batch=5", rsyslog.tcp_port);
    let server = TestServer::start_in(&data_dir, &["--forward", &forward]).await;
    let sequences = || -> Vec<u64> {
        rsyslog
            .messages()
            .iter()
            .filter_map(|m| m.param("sequence").filter(|_| m.sd_id == "audit@32473"))
            .map(|s| s.parse().unwrap())
            .collect()
    };
    eventually("some entries at rsyslog", || sequences().len() >= 20).await;
    server.kill().await;
    let saved = forwarder_position(&data_dir, "siem").unwrap();
    assert!(saved < TOTAL, "delivery was over before the kill");

    let server = TestServer::start_in(&data_dir, &["--forward", &forward]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while sequences().last() != Some(&TOTAL) {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} messages",
            sequences().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sequences = sequences();
    let mut counts = std::collections::BTreeMap::new();
    for sequence in &sequences {
        *counts.entry(*sequence).or_insert(0) += 1;
    }
    assert_eq!(counts.len() as u64, TOTAL, "an entry is missing");
    let repeated: Vec<u64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        repeated.iter().all(|s| *s > saved),
        "repeated {repeated:?}, saved {saved}"
    );
    assert!(
        repeated.len() <= 5,
        "more than the unacknowledged batch: {repeated:?}"
    );
    assert!(server.stop().await.success());
    drop(data);
}

#[tokio::test]
async fn a_tcp_receiver_that_restarts_misses_nothing() {
    let first = Rsyslog::start(None).await;
    let port = first.tcp_port;
    let forward = format!("siem=syslog+tcp://127.0.0.1:{port}?batch=1");
    let server = TestServer::start_with_args(&["--forward", &forward]).await;
    let client = server.client().await;
    let record = |i: u64| {
        let client = client.clone();
        async move {
            client
                .record(
                    entry("kms", "/kms.v1.Keys/Get")
                        .resource(format!("keys/{i}"))
                        .build(),
                )
                .await
                .unwrap();
        }
    };
    let sequences = |rsyslog: &Rsyslog| -> Vec<u64> {
        rsyslog
            .messages()
            .iter()
            .filter(|m| m.sd_id == "audit@32473")
            .map(|m| m.param("sequence").unwrap().parse().unwrap())
            .collect()
    };
    for i in 1..=3 {
        record(i).await;
    }
    eventually("three entries at the first rsyslog", || {
        sequences(&first) == [1, 2, 3]
    })
    .await;
    // The receiver goes away with the connection open; entries go on being recorded.
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 4..=6 {
        record(i).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = Rsyslog::start_on(None, port).await;
    eventually("the rest at the second rsyslog", || {
        sequences(&second).last() == Some(&6)
    })
    .await;
    let got = sequences(&second);
    assert_eq!(
        got.first(),
        Some(&4),
        "entry 4 was lost on the closed connection: {got:?}"
    );
    assert_eq!(got, [4, 5, 6]);
    assert!(server.stop().await.success());
}
