//! File sinks: one line per item appended to a file, and an fsync (`fdatasync`) per batch before
//! the batch counts as delivered (a new file's directory is synced too). The file is rotated
//! before a line would take it past `max_size`, or when its first line is older than
//! `rotate_every` (`audit.log` → `audit.log.1` → `audit.log.2` …, `max_files` rotated files
//! kept, default 5; see [`rotated`] for `max_age` and `compress`), so a line is never split
//! across files; the old file is synced before it is renamed, and the directory after. A batch
//! that fails part way is cut off the file again before it is retried, so a retry never leaves
//! half a line. On SIGHUP the file is reopened before the next batch, for an outside tool
//! (logrotate) that moved it away.

mod rotated;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::cursor::{Sink, SinkError};
use super::item::{Encoding, Item};
use super::options::Options;
use crate::error::Error;
use rotated::{Compression, Rotated, sync_dir};

/// Options of the file sink besides `format`/`template`.
pub const OPTIONS: &str = "max_size (bytes, or with K, M, G), max_files, rotate_every (a duration), max_age (a duration), compress (gzip|none)";

/// How often, at most, rotated files are checked for `max_age` between rotations.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// Appends lines to a file.
pub struct FileSink {
    state: Option<State>,
    encoding: Encoding,
    /// SIGHUP, when a runtime was there to listen for it.
    hangups: Option<tokio::signal::unix::Signal>,
}

struct State {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    /// Where the batch being written began in the current file (0 after a rotation).
    batch_start: u64,
    /// The live file was empty when opened: its directory is synced with the next batch.
    fresh: bool,
    /// When the live file's first line was written (its creation, for a file found at open).
    first_line: Option<SystemTime>,
    max_size: Option<u64>,
    rotate_every: Option<Duration>,
    rotated: Rotated,
    /// When rotated files were last checked for `max_age` (`None`: not since the start).
    expired_at: Option<Instant>,
}

impl FileSink {
    /// A sink appending to `path`, from its options.
    pub fn new(path: PathBuf, encoding: Encoding, options: &mut Options) -> Result<Self, Error> {
        // No limit unless given.
        let max_size = Some(options.bytes("max_size", u64::MAX)?).filter(|max| *max != u64::MAX);
        let max_files = options.parse("max_files", 5usize)?;
        if max_files == 0 {
            return Err(options.error("option `max_files`: at least 1"));
        }
        let rotate_every = options
            .take("rotate_every")?
            .map(|text| {
                crate::config::parse_duration(&text)
                    .map_err(|e| options.error(format!("option `rotate_every`: {e}")))
            })
            .transpose()?;
        let max_age = options
            .take("max_age")?
            .map(|text| {
                crate::config::parse_duration(&text)
                    .map_err(|e| options.error(format!("option `max_age`: {e}")))
            })
            .transpose()?;
        let compression = match options.take("compress")?.as_deref() {
            None | Some("none") => Compression::None,
            Some("gzip") => Compression::Gzip,
            Some(other) => {
                return Err(options.error(format!("option `compress`: `{other}` (gzip or none)")));
            }
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| options.error(format!("{}: {e}", parent.display())))?;
        }
        let hangups = match tokio::runtime::Handle::try_current() {
            Ok(_) => Some(
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    .map_err(|e| options.error(format!("cannot listen for SIGHUP: {e}")))?,
            ),
            Err(_) => None,
        };
        Ok(Self {
            state: Some(State {
                rotated: Rotated::new(path.clone(), max_files, max_age, compression),
                path,
                file: None,
                size: 0,
                batch_start: 0,
                first_line: None,
                fresh: false,
                max_size,
                rotate_every,
                expired_at: None,
            }),
            encoding,
            hangups,
        })
    }
}

impl State {
    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            use std::os::unix::fs::OpenOptionsExt as _;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(&self.path)?;
            let metadata = file.metadata()?;
            self.size = metadata.len();
            self.fresh = self.size == 0;
            // A file system that keeps no creation time: its age counts from now.
            self.first_line =
                (self.size > 0).then(|| metadata.created().unwrap_or_else(|_| SystemTime::now()));
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Syncs and closes the live file, shifts it to `.1`, and opens a new one.
    fn rotate(&mut self) -> io::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        self.rotated.shift()?;
        self.expired_at = Some(Instant::now());
        self.open()?;
        // What the batch wrote before is whole and synced in the rotated file.
        self.batch_start = 0;
        Ok(())
    }

    /// Whether `bytes` more must go to a new file: past `max_size`, or the first line too old.
    fn due(&self, bytes: u64) -> bool {
        if self.size == 0 {
            return false;
        }
        let too_big = self.max_size.is_some_and(|max| self.size + bytes > max);
        let too_old = match (self.rotate_every, self.first_line) {
            (Some(every), Some(first)) => first.elapsed().unwrap_or_default() >= every,
            _ => false,
        };
        too_big || too_old
    }

    fn write(&mut self, lines: &[String]) -> io::Result<()> {
        if self
            .expired_at
            .is_none_or(|at| at.elapsed() >= EXPIRE_EVERY)
        {
            // Also tidies what a crash left, at the first batch.
            if self.expired_at.is_none() {
                self.rotated.recover()?;
            } else {
                self.rotated.expire()?;
            }
            self.expired_at = Some(Instant::now());
        }
        self.open()?;
        self.batch_start = self.size;
        let result = self.write_lines(lines);
        if result.is_err()
            && let Some(file) = &self.file
        {
            // Cut the batch off the current file, so that the retry starts on a line boundary.
            if file.set_len(self.batch_start).is_ok() {
                self.size = self.batch_start;
            } else {
                self.file = None;
            }
        }
        result
    }

    fn write_lines(&mut self, lines: &[String]) -> io::Result<()> {
        for line in lines {
            let bytes = line.len() as u64 + 1;
            if self.due(bytes) {
                self.rotate()?;
            }
            if self.size == 0 {
                self.first_line = Some(SystemTime::now());
            }
            let file = self.open()?;
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")?;
            self.size += bytes;
        }
        self.open()?.sync_data()?;
        if std::mem::take(&mut self.fresh) {
            // A new file: its name is durable once the directory is synced.
            sync_dir(&self.path)?;
        }
        Ok(())
    }
}

impl Sink for FileSink {
    async fn send(&mut self, items: &[Item]) -> Result<(), SinkError> {
        let lines: Vec<String> = items.iter().map(|item| self.encoding.line(item)).collect();
        let mut state = self
            .state
            .take()
            .expect("the state is put back after each batch");
        if let Some(hangups) = &mut self.hangups {
            use futures::FutureExt as _;
            // Signals that came together are one.
            while let Some(Some(())) = hangups.recv().now_or_never() {
                state.file = None;
            }
        }
        let (state, result) = tokio::task::spawn_blocking(move || {
            let result = state.write(&lines);
            (state, result)
        })
        .await
        .map_err(|e| SinkError::Halt(format!("file writer failed: {e}")))?;
        let path = state.path.display().to_string();
        self.state = Some(state);
        result.map_err(|e| SinkError::retry(format!("{path}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_proto::pb::AuditEntry;

    #[tokio::test]
    async fn lines_rotate_by_size_and_never_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let encoding = Encoding {
            format: audit_format::Format::named("logstash").unwrap(),
        };
        let mut options = Options::new(
            "f",
            vec![
                ("max_size".into(), "1K".into()),
                ("max_files".into(), "2".into()),
            ],
        );
        let mut sink = FileSink::new(path.clone(), encoding, &mut options).unwrap();
        options.finish("").unwrap();
        let items: Vec<Item> = (1..=40)
            .map(|sequence| {
                Item::Entry(AuditEntry {
                    sequence,
                    id: format!("id-{sequence}"),
                    ..Default::default()
                })
            })
            .collect();
        for batch in items.chunks(7) {
            sink.send(batch).await.unwrap();
        }
        let mut sequences = Vec::new();
        for file in [
            path.with_extension("log.2"),
            path.with_extension("log.1"),
            path.clone(),
        ] {
            let text = fs::read_to_string(&file).unwrap();
            assert!(
                text.len() <= 1024 && text.ends_with('\n'),
                "{}",
                file.display()
            );
            for line in text.lines() {
                let json: serde_json::Value = serde_json::from_str(line).unwrap();
                sequences.push(json["sequence"].as_u64().unwrap());
            }
        }
        assert!(!path.with_extension("log.3").exists());
        // The oldest lines went with the removed file; the newest are all there, in order.
        assert_eq!(*sequences.last().unwrap(), 40);
        assert!(
            sequences.windows(2).all(|w| w[1] == w[0] + 1),
            "{sequences:?}"
        );
    }
}
