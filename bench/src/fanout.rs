//! Live subscribers for the fan-out cases. Each has its own connection, as separate consumers
//! would, and decodes only what it measures (sequence and time), so the load generator spends
//! as little CPU as it can on the receiving side.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use audit_proto::pb;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

/// `SubscribeResponse` with only the fields a subscriber here looks at; prost skips the rest.
#[derive(Clone, PartialEq, prost::Message)]
struct LightResponse {
    #[prost(oneof = "LightMessage", tags = "1, 2")]
    message: Option<LightMessage>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum LightMessage {
    #[prost(message, tag = "1")]
    Entry(LightEntry),
    #[prost(message, tag = "2")]
    Heartbeat(LightHeartbeat),
}

#[derive(Clone, PartialEq, prost::Message)]
struct LightEntry {
    #[prost(uint64, tag = "2")]
    sequence: u64,
    #[prost(message, optional, tag = "4")]
    time: Option<prost_types::Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LightHeartbeat {
    #[prost(uint64, tag = "1")]
    sequence: u64,
}

/// What one subscriber saw: for each entry, its time (ns since the epoch) and how long after
/// that time it arrived (µs).
#[derive(Debug, Default)]
pub struct Seen {
    pub deliveries: Vec<(i64, u32)>,
    pub last_sequence: u64,
    pub error: Option<String>,
}

/// A set of live subscribers.
pub struct Subscribers {
    tasks: Vec<JoinHandle<Seen>>,
    /// The last sequence each subscriber has seen.
    progress: Vec<Arc<AtomicU64>>,
    stop: watch::Sender<bool>,
}

impl Subscribers {
    /// Opens `count` subscriptions from now with an empty filter (every entry), and waits until
    /// each has received its opening heartbeat, so all of them are live.
    pub async fn open(uri: &str, count: usize, record: bool) -> anyhow::Result<Self> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut progress = Vec::with_capacity(count);
        let ready = Arc::new(Semaphore::new(0));
        let mut tasks = Vec::with_capacity(count);
        for _ in 0..count {
            let channel = Endpoint::from_shared(uri.to_string())?
                .connect()
                .await
                .context("subscriber connect")?;
            let ready = ready.clone();
            let mut stop = stop_rx.clone();
            let position = Arc::new(AtomicU64::new(0));
            progress.push(position.clone());
            tasks.push(tokio::spawn(async move {
                let mut seen = Seen::default();
                let mut grpc = tonic::client::Grpc::new(channel);
                let opened = async {
                    grpc.ready().await.map_err(|e| e.to_string())?;
                    let path =
                        http::uri::PathAndQuery::from_static("/audit.v1.AuditService/Subscribe");
                    let codec =
                        tonic_prost::ProstCodec::<pb::SubscribeRequest, LightResponse>::default();
                    grpc.server_streaming(
                        tonic::Request::new(pb::SubscribeRequest::default()),
                        path,
                        codec,
                    )
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|e| e.to_string())
                };
                let mut stream = match opened.await {
                    Ok(stream) => stream,
                    Err(e) => {
                        seen.error = Some(e);
                        ready.add_permits(1);
                        return seen;
                    }
                };
                let mut first = true;
                loop {
                    let message = tokio::select! {
                        m = stream.message() => m,
                        _ = stop.wait_for(|s| *s) => break,
                    };
                    let message = match message {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(e) => {
                            seen.error = Some(e.to_string());
                            break;
                        }
                    };
                    if first {
                        first = false;
                        ready.add_permits(1);
                    }
                    match message.message {
                        Some(LightMessage::Entry(entry)) => {
                            seen.last_sequence = entry.sequence;
                            position.store(entry.sequence, Ordering::Relaxed);
                            if record && let Some(time) = entry.time {
                                let sent = time.seconds * 1_000_000_000 + i64::from(time.nanos);
                                let now = SystemTime::now()
                                    .duration_since(SystemTime::UNIX_EPOCH)
                                    .unwrap_or_default()
                                    .as_nanos() as i64;
                                let micros = ((now - sent).max(0) / 1000) as u32;
                                seen.deliveries.push((sent, micros));
                            }
                        }
                        Some(LightMessage::Heartbeat(hb)) => {
                            seen.last_sequence = seen.last_sequence.max(hb.sequence);
                            position.fetch_max(hb.sequence, Ordering::Relaxed);
                        }
                        None => {}
                    }
                }
                if first {
                    ready.add_permits(1);
                }
                seen
            }));
        }
        let all = u32::try_from(count).unwrap_or(u32::MAX);
        tokio::time::timeout(Duration::from_secs(60), ready.acquire_many(all))
            .await
            .context("subscribers did not open within 60 s")?
            .context("ready semaphore")?
            .forget();
        Ok(Subscribers {
            tasks,
            progress,
            stop: stop_tx,
        })
    }

    /// Waits up to `grace` for the subscribers to reach `sequence`, then stops them and returns
    /// what they saw.
    pub async fn finish(self, sequence: u64, grace: Duration) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline
            && self
                .progress
                .iter()
                .any(|p| p.load(Ordering::Relaxed) < sequence)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.stop.send(true);
        let mut all = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            if let Ok(seen) = task.await {
                all.push(seen);
            }
        }
        all
    }
}

/// Subscribers that open their streams and never read them, as a stuck consumer would. Each
/// has its own connection; the server's sends to it stop once its HTTP/2 stream window is full.
pub struct Stalled {
    _streams: Vec<tonic::Streaming<pb::SubscribeResponse>>,
    /// The process holding them, when they run apart; killed on drop.
    _process: Option<tokio::process::Child>,
}

impl Stalled {
    /// Opens `count` subscriptions from now with an empty filter and a stream window of
    /// `window` bytes.
    pub async fn open(uri: &str, count: usize, window: u32) -> anyhow::Result<Self> {
        let mut streams = Vec::with_capacity(count);
        for _ in 0..count {
            let channel = Endpoint::from_shared(uri.to_string())?
                .initial_stream_window_size(window)
                .connect()
                .await
                .context("stalled subscriber connect")?;
            let stream = pb::audit_service_client::AuditServiceClient::new(channel)
                .subscribe(pb::SubscribeRequest::default())
                .await
                .context("stalled subscribe")?
                .into_inner();
            streams.push(stream);
        }
        Ok(Stalled {
            _streams: streams,
            _process: None,
        })
    }

    /// Opens them in a child process (`program --hold-stalled`), once it says they are open.
    pub async fn apart(
        program: &std::path::Path,
        uri: &str,
        count: usize,
        window: u32,
    ) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(program)
            .arg("--hold-stalled")
            .arg(count.to_string())
            .arg("--hold-stalled-uri")
            .arg(uri)
            .arg("--stalled-window-bytes")
            .arg(window.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start the stalled subscribers' process")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("stalled subscribers did not open within 120 s")??;
        anyhow::ensure!(
            line.as_deref() == Some("stalled ready"),
            "unexpected {line:?}"
        );
        Ok(Stalled {
            _streams: Vec::new(),
            _process: Some(child),
        })
    }

    /// The child's side of [`Stalled::apart`]: opens them, says so, and holds them until the
    /// parent kills it.
    pub async fn hold(uri: &str, count: usize, window: u32) -> anyhow::Result<()> {
        use std::io::Write;
        let _stalled = Stalled::open(uri, count, window).await?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "stalled ready")?;
        stdout.flush()?;
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// Record-to-delivery latencies, in microseconds, of the entries sent between `from` and
/// `until` (the measured window), over every subscriber.
pub fn delivered_between(
    seen: &[Seen],
    from: std::time::SystemTime,
    until: std::time::SystemTime,
) -> Vec<u32> {
    let nanos = |t: std::time::SystemTime| {
        t.duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i64
    };
    let (from, until) = (nanos(from), nanos(until));
    seen.iter()
        .flat_map(|s| s.deliveries.iter())
        .filter(|(sent, _)| (from..until).contains(sent))
        .map(|(_, micros)| *micros)
        .collect()
}
