//! Where each forwarder is: the last sequence its sink acknowledged, saved durably after the
//! acknowledgement, so that a restart resumes right after it.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Durable positions of forwarders, by name.
pub trait PositionStore: Send + Sync + 'static {
    /// The saved position of `name`, if one was saved.
    fn load(&self, name: &str) -> io::Result<Option<u64>>;
    /// Saves `position` for `name`; durable when it returns.
    fn save(&self, name: &str, position: u64) -> io::Result<()>;
}

/// Positions in files: `<dir>/<name>.position`, each holding a decimal number and a newline,
/// replaced atomically (a temporary file, fsync, rename, fsync of the directory).
#[derive(Debug, Clone)]
pub struct FilePositions {
    dir: PathBuf,
}

impl FilePositions {
    /// Positions in `dir` (created, mode 0700, if missing).
    pub fn open(dir: &Path) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.position"))
    }
}

impl PositionStore for FilePositions {
    fn load(&self, name: &str) -> io::Result<Option<u64>> {
        match fs::read_to_string(self.path(name)) {
            Ok(text) => text.trim().parse().map(Some).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} does not hold a position", self.path(name).display()),
                )
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn save(&self, name: &str, position: u64) -> io::Result<()> {
        let path = self.path(name);
        let temporary = self.dir.join(format!(".{name}.position.tmp"));
        let mut file = File::create(&temporary)?;
        writeln!(file, "{position}")?;
        file.sync_all()?;
        fs::rename(&temporary, &path)?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let positions = FilePositions::open(&dir.path().join("forwarders")).unwrap();
        assert_eq!(positions.load("siem").unwrap(), None);
        positions.save("siem", 41).unwrap();
        positions.save("siem", 42).unwrap();
        let again = FilePositions::open(&dir.path().join("forwarders")).unwrap();
        assert_eq!(again.load("siem").unwrap(), Some(42));
        assert_eq!(again.load("other").unwrap(), None);
        fs::write(dir.path().join("forwarders/bad.position"), "x").unwrap();
        assert!(again.load("bad").is_err());
    }
}
