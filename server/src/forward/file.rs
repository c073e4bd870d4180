//! File sinks: one line per item appended to a file, and an fsync (`fdatasync`) per batch before
//! the batch counts as delivered. With `max_size`, the file is rotated before a line would take
//! it past that size (`audit.log` → `audit.log.1` → `audit.log.2` …, `max_files` rotated files
//! kept, default 5), so a line is never split across files. A batch that fails part way is cut
//! off the file again before it is retried, so a retry never leaves half a line. On SIGHUP the
//! file is reopened before the next batch, for an outside tool (logrotate) that moved it away.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use super::cursor::{Sink, SinkError};
use super::item::{Encoding, Item};
use super::options::Options;
use crate::error::Error;

/// Options of the file sink besides `format`/`template`.
pub const OPTIONS: &str = "max_size (bytes, or with K, M, G), max_files";

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
    max_size: Option<u64>,
    max_files: usize,
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
                path,
                file: None,
                size: 0,
                batch_start: 0,
                max_size,
                max_files,
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
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// `path.N-1` → `path.N` … `path` → `path.1`; the oldest beyond `max_files` is removed.
    fn rotate(&mut self) -> io::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        let _ = fs::remove_file(self.rotated(self.max_files));
        for n in (1..self.max_files).rev() {
            match fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
        fs::rename(&self.path, self.rotated(1))?;
        sync_dir(&self.path)?;
        self.open()?;
        // What the batch wrote before is whole and synced in the rotated file.
        self.batch_start = 0;
        Ok(())
    }

    fn write(&mut self, lines: &[String]) -> io::Result<()> {
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
            if let Some(max) = self.max_size
                && self.size > 0
                && self.size + bytes > max
            {
                self.rotate()?;
            }
            let file = self.open()?;
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")?;
            self.size += bytes;
        }
        let created = self.size == lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
        self.open()?.sync_data()?;
        if created {
            sync_dir(&self.path)?;
        }
        Ok(())
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
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
