//! The rotated files beside a file sink's live file: `audit.log.1` (the newest) to
//! `audit.log.N`, or `audit.log.1.gz` … once compressed. They are shifted up by one at each
//! rotation (the oldest beyond `max_files` is removed), deleted once older than `max_age`, and
//! compressed one at a time on a thread of their own, off the write path.
//!
//! Compression never loses the uncompressed file: `audit.log.1` is compressed into
//! `audit.log.1.gz.tmp`, which is synced and only then renamed to `audit.log.1.gz`; the
//! uncompressed file is removed after that rename. A crash in between leaves either a
//! leftover `.tmp` (removed, and the file compressed again, at the next open) or both files
//! (the uncompressed one is removed: the `.gz` is whole, it was synced before its rename).
//! A rotated file's modification time, kept by its compressed copy, is its age.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// How rotated files are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Left as they are.
    None,
    /// gzip (`.gz`), readable with `zcat`.
    Gzip,
}

/// The rotated files of one live file.
pub struct Rotated {
    live: PathBuf,
    max_files: usize,
    max_age: Option<Duration>,
    compression: Compression,
    /// The compression in progress, if any: waited for before the files shift.
    compressing: Option<JoinHandle<()>>,
}

impl Rotated {
    /// The rotated files of `live`.
    pub fn new(
        live: PathBuf,
        max_files: usize,
        max_age: Option<Duration>,
        compression: Compression,
    ) -> Self {
        Self {
            live,
            max_files,
            max_age,
            compression,
            compressing: None,
        }
    }

    /// Rotated file `n`, compressed or not.
    pub fn path(&self, n: usize, compressed: bool) -> PathBuf {
        let mut name = self.live.clone().into_os_string();
        name.push(format!(".{n}"));
        if compressed {
            name.push(".gz");
        }
        PathBuf::from(name)
    }

    fn temporary(&self, n: usize) -> PathBuf {
        let mut name = self.path(n, true).into_os_string();
        name.push(".tmp");
        PathBuf::from(name)
    }

    /// Tidies what a crash left (see the module's comment), deletes expired files and starts
    /// compressing any rotated file left uncompressed.
    pub fn recover(&mut self) -> io::Result<()> {
        let mut uncompressed = Vec::new();
        for n in 1..=self.max_files {
            remove_if_present(&self.temporary(n))?;
            let plain = self.path(n, false);
            if self.path(n, true).exists() {
                remove_if_present(&plain)?;
            } else if plain.exists() {
                uncompressed.push(n);
            }
        }
        self.expire()?;
        if self.compression == Compression::Gzip {
            self.compress_in_background(uncompressed);
        }
        Ok(())
    }

    /// Moves the live file to `.1` (once synced), shifting the others up by one and removing
    /// the one beyond `max_files`; then compresses `.1` in the background.
    pub fn shift(&mut self) -> io::Result<()> {
        self.wait();
        for compressed in [false, true] {
            remove_if_present(&self.path(self.max_files, compressed))?;
        }
        for n in (1..self.max_files).rev() {
            for compressed in [false, true] {
                match fs::rename(self.path(n, compressed), self.path(n + 1, compressed)) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                    _ => {}
                }
            }
        }
        fs::rename(&self.live, self.path(1, false))?;
        sync_dir(&self.live)?;
        self.expire()?;
        if self.compression == Compression::Gzip {
            self.compress_in_background(vec![1]);
        }
        Ok(())
    }

    /// Deletes the rotated files older than `max_age`.
    pub fn expire(&self) -> io::Result<()> {
        let Some(max_age) = self.max_age else {
            return Ok(());
        };
        let now = SystemTime::now();
        let mut removed = false;
        for n in 1..=self.max_files {
            for compressed in [false, true] {
                let path = self.path(n, compressed);
                let modified = match fs::metadata(&path).and_then(|m| m.modified()) {
                    Ok(modified) => modified,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                };
                if now.duration_since(modified).unwrap_or_default() > max_age {
                    remove_if_present(&path)?;
                    removed = true;
                }
            }
        }
        if removed {
            sync_dir(&self.live)?;
        }
        Ok(())
    }

    /// Waits for the compression in progress, if any.
    pub fn wait(&mut self) {
        if let Some(compressing) = self.compressing.take() {
            let _ = compressing.join();
        }
    }

    fn compress_in_background(&mut self, files: Vec<usize>) {
        if files.is_empty() {
            return;
        }
        let jobs: Vec<(PathBuf, PathBuf, PathBuf)> = files
            .into_iter()
            .map(|n| (self.path(n, false), self.temporary(n), self.path(n, true)))
            .collect();
        self.compressing = Some(std::thread::spawn(move || {
            for (plain, temporary, compressed) in jobs {
                if !plain.exists() {
                    // Expired before its turn.
                    continue;
                }
                if let Err(error) = gzip(&plain, &temporary, &compressed) {
                    // Left uncompressed, whole; compressed again at the next open.
                    let _ = fs::remove_file(&temporary);
                    tracing::warn!(file = %plain.display(), %error, "cannot compress a rotated file; it stays uncompressed");
                }
            }
        }));
    }
}

impl Drop for Rotated {
    fn drop(&mut self) {
        self.wait();
    }
}

/// Compresses `plain` into `compressed` through `temporary`, then removes `plain`.
fn gzip(plain: &Path, temporary: &Path, compressed: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut input = File::open(plain)?;
    let modified = input.metadata()?.modified()?;
    let output = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(temporary)?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    io::copy(&mut input, &mut encoder)?;
    let mut output = encoder.finish()?;
    output.flush()?;
    // Its age is the rotated file's, not the compression's.
    output.set_modified(modified)?;
    output.sync_all()?;
    fs::rename(temporary, compressed)?;
    sync_dir(compressed)?;
    fs::remove_file(plain)?;
    sync_dir(plain)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Syncs the directory holding `path`, so that renames and removals in it are durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn unzip(path: &Path) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn a_crash_mid_compression_keeps_the_uncompressed_file() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("audit.log");
        let mut rotated = Rotated::new(live.clone(), 3, None, Compression::Gzip);
        // Crashed before the rename: a partial `.tmp` beside the whole file.
        fs::write(rotated.path(1, false), "one\n").unwrap();
        fs::write(rotated.temporary(1), "partial").unwrap();
        // Crashed after the rename, before the removal: both, the `.gz` whole.
        fs::write(rotated.path(2, false), "two\n").unwrap();
        gzip(
            &rotated.path(2, false),
            &rotated.temporary(2),
            &rotated.path(2, true),
        )
        .unwrap();
        fs::write(rotated.path(2, false), "two\n").unwrap();
        rotated.recover().unwrap();
        rotated.wait();
        assert_eq!(unzip(&rotated.path(1, true)), "one\n");
        assert_eq!(unzip(&rotated.path(2, true)), "two\n");
        for n in 1..=2 {
            assert!(!rotated.path(n, false).exists() && !rotated.temporary(n).exists());
        }
    }

    #[test]
    fn files_older_than_max_age_go_and_compression_keeps_the_age() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("audit.log");
        let hour = Duration::from_secs(3600);
        let mut rotated = Rotated::new(live.clone(), 5, Some(hour), Compression::Gzip);
        let old = SystemTime::now() - 2 * hour;
        for n in [2, 3] {
            let file = File::create(rotated.path(n, n == 3)).unwrap();
            file.set_modified(old).unwrap();
        }
        // The live file's last line is half an hour old: within the age, kept, compressed.
        let recent = SystemTime::now() - hour / 2;
        fs::write(&live, "new\n").unwrap();
        let file = File::options().write(true).open(&live).unwrap();
        file.set_modified(recent).unwrap();
        drop(file);
        rotated.shift().unwrap();
        rotated.wait();
        // The shifted old ones (now .3 and .4.gz) are gone.
        assert!(!rotated.path(3, false).exists() && !rotated.path(4, true).exists());
        assert_eq!(unzip(&rotated.path(1, true)), "new\n");
        let kept = fs::metadata(rotated.path(1, true))
            .unwrap()
            .modified()
            .unwrap();
        let drift = kept.duration_since(recent).unwrap_or_else(|e| e.duration());
        assert!(
            drift < Duration::from_secs(1),
            "the compressed copy keeps the age"
        );
    }
}
