//! Connections that could exhaust the server or hold up its shutdown: idle and silent peers,
//! handshakes that never finish, more connections than the cap, too many streams, and running
//! out of file descriptors.

use std::time::Duration;

use audit_client::pb;
use audit_tests::{PATIENCE, TestServer, entry, take_entries};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP/2 client connection preface followed by an empty SETTINGS frame.
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Reads one HTTP/2 frame: its type and payload; `None` once the server closed the connection.
async fn read_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await.ok()?;
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await.ok()?;
    Some((header[3], payload))
}

/// Waits for the server to close `stream`, failing if it is still open after [`PATIENCE`].
async fn assert_closed_by_server(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: the server kept the connection open"
    );
}

/// Whether a health check on a fresh connection is answered at once.
async fn serves_now(server: &TestServer) -> bool {
    let attempt = async {
        let client = audit_client::Client::connect(server.uri()).await.ok()?;
        client.health("").await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(_))
    )
}

/// Whether the server still answers a health check on a fresh connection.
async fn serves(server: &TestServer) -> bool {
    tokio::time::timeout(PATIENCE, async {
        let client = audit_client::Client::connect(server.uri()).await.ok()?;
        client.health("").await.ok()
    })
    .await
    .ok()
    .flatten()
    .is_some()
}

#[tokio::test]
async fn an_idle_tcp_connection_does_not_hold_up_shutdown() {
    let server = TestServer::start_with_args(&["--shutdown-grace", "1s"]).await;
    let _silent = TcpStream::connect(server.addr).await.unwrap();
    let client = server.client().await;
    client.record(entry("svc", "/svc.v1.S/Kept")).await.unwrap();
    // `stop` fails the test unless the server exits within PATIENCE.
    let status = server.stop().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_silent_http2_client_does_not_hold_up_shutdown() {
    let server = TestServer::start_with_args(&["--shutdown-grace", "1s"]).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    silent.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    // It never acknowledges the server's settings nor answers its pings.
    let (kind, _) = read_frame(&mut silent).await.expect("server settings");
    assert_eq!(kind, FRAME_SETTINGS);
    let status = server.stop().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_connection_that_never_completes_its_handshake_is_closed() {
    let server = TestServer::start_with_args(&["--handshake-timeout", "1s"]).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert_closed_by_server(&mut silent, "no preface sent").await;

    // Half a preface is no better.
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(&PREFACE_AND_SETTINGS[..10])
        .await
        .unwrap();
    assert_closed_by_server(&mut partial, "half a preface").await;
    assert!(serves(&server).await);
}

#[tokio::test]
async fn an_idle_connection_gets_a_goaway_and_clients_reconnect() {
    let server = TestServer::start_with_args(&["--idle-timeout", "1s"]).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    let goaway = tokio::time::timeout(PATIENCE, async {
        while let Some((kind, _)) = read_frame(&mut idle).await {
            if kind == FRAME_GOAWAY {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(goaway, Ok(true), "an idle connection is told to go away");

    // A client whose connection was closed for idleness reconnects on its next call.
    let client = server.client().await;
    client
        .record(entry("svc", "/svc.v1.S/First"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client
        .record(entry("svc", "/svc.v1.S/Second"))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_open_subscription_keeps_its_connection_past_the_idle_timeout() {
    let server = TestServer::start_with_args(&["--idle-timeout", "1s"]).await;
    let reader = server.client().await;
    // The raw stream, which ends with an error if its connection closes (the client's
    // `Subscription` would resume, hiding it).
    let stream = reader
        .raw()
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let entries = stream.filter_map(|response| async move {
        match response.map(|r| r.message) {
            Ok(Some(pb::subscribe_response::Message::Entry(entry))) => Some(Ok(entry)),
            Ok(_) => None,
            Err(status) => Some(Err(status)),
        }
    });
    let mut entries = std::pin::pin!(entries);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let writer = server.client().await;
    writer.record(entry("svc", "/svc.v1.S/Late")).await.unwrap();
    let received = take_entries(&mut entries, 1).await;
    assert_eq!(received[0].method, "/svc.v1.S/Late");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let server =
        TestServer::start_with_args(&["--max-connections", "2", "--handshake-timeout", "10m"])
            .await;
    let first = TcpStream::connect(server.addr).await.unwrap();
    let _second = TcpStream::connect(server.addr).await.unwrap();
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    assert_closed_by_server(&mut third, "a connection over the cap").await;

    // A place frees up once the server has seen a connection end.
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !serves_now(&server).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a new client is served below the cap"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_stream_limit_is_advertised_to_every_connection() {
    let server = TestServer::start_with_args(&["--max-concurrent-streams", "7"]).await;
    let mut connection = TcpStream::connect(server.addr).await.unwrap();
    connection.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    let (kind, payload) = read_frame(&mut connection).await.expect("server settings");
    assert_eq!(kind, FRAME_SETTINGS);
    let max_streams = payload.chunks_exact(6).find_map(|setting| {
        let id = u16::from_be_bytes([setting[0], setting[1]]);
        (id == SETTINGS_MAX_CONCURRENT_STREAMS)
            .then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
    });
    assert_eq!(max_streams, Some(7));
}

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn running_out_of_file_descriptors_pauses_accepting_and_recovers() {
    let server = TestServer::start_with_args(&["--handshake-timeout", "10m"]).await;
    let client = server.client().await;
    client
        .record(entry("svc", "/svc.v1.S/Before"))
        .await
        .unwrap();
    let limited = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", server.pid()))
        .arg("--nofile=64:64")
        .status()
        .expect("run prlimit");
    assert!(limited.success());

    // The kernel keeps completing connections into the backlog while the server has no
    // descriptor left to accept them with.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(server.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(server.pid()) - before;
    // A busy accept loop burns all of the 2 s (200 ticks); backing off costs next to nothing.
    assert!(
        spent < 100,
        "the server spent {spent} ticks of 200 while out of descriptors"
    );

    drop(held);
    // The existing connection still works, and new ones are accepted again.
    client
        .record(entry("svc", "/svc.v1.S/After"))
        .await
        .unwrap();
    assert!(
        serves(&server).await,
        "accepting resumes once descriptors are free"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_never_reads_does_not_hold_up_shutdown() {
    let mut server = TestServer::start_with_args(&["--shutdown-grace", "1s"]).await;
    let client = server.client().await;
    // Its stream is opened and then never read: the HTTP/2 windows fill and stay full, so the
    // end of the stream can never be delivered.
    let _stalled = client
        .raw()
        .subscribe(pb::SubscribeRequest {
            start: Some(pb::StartPosition {
                position: Some(pb::start_position::Position::AfterSequence(0)),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let padding = "x".repeat(3000);
    let mut acknowledged = Vec::new();
    for i in 0..2000 {
        let receipt = client
            .record(
                entry("svc", "/svc.v1.S/Fill")
                    .resource(format!("r{i}"))
                    .status(2, padding.clone()),
            )
            .await
            .unwrap();
        acknowledged.push(receipt.sequence);
    }
    let data = server.keep_data_dir().unwrap();
    let status = server.stop().await;
    assert!(status.success(), "exit status {status}");

    // Every acknowledged entry is kept.
    let again = TestServer::start_in(&data.path().join("data"), &[]).await;
    let stored = audit_tests::all_entries(&again.client().await).await;
    assert_eq!(stored.len(), acknowledged.len());
}
