//! Output files written whole or not at all: bytes go to a temporary file in the target's
//! directory, which [`PendingFile::finish`] syncs and renames over the target. Dropped before
//! that (an error, a cancelled run), the temporary file is deleted and any earlier file at the
//! target is left untouched. Every file gemma.rs writes for the user goes through here: models,
//! logits, perplexity base files, saved chats.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

pub struct PendingFile {
    out: BufWriter<NamedTempFile>,
    path: PathBuf,
}

impl PendingFile {
    /// Starts writing `path` (nothing appears there before [`finish`](Self::finish)).
    pub fn create(path: impl AsRef<Path>) -> io::Result<PendingFile> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = NamedTempFile::new_in(dir)?;
        Ok(PendingFile { out: BufWriter::with_capacity(1 << 20, tmp), path })
    }

    /// The target path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file, everything written so far flushed into it (to size or extend it).
    pub fn file(&mut self) -> io::Result<&File> {
        self.out.flush()?;
        Ok(self.out.get_ref().as_file())
    }

    /// Flushes, makes the file readable as an ordinary one (a temporary file is private, 0600),
    /// syncs it and renames it over the target; returns the target path.
    pub fn finish(self) -> io::Result<PathBuf> {
        let PendingFile { out, path } = self;
        let tmp = out.into_inner().map_err(|e| e.into_error())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(path)
    }
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_appears_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"earlier").unwrap();
        let mut f = PendingFile::create(&target).unwrap();
        f.write_all(b"new contents").unwrap();
        assert_eq!(f.file().unwrap().metadata().unwrap().len(), 12, "flushed into the temporary file");
        assert_eq!(std::fs::read(&target).unwrap(), b"earlier", "the target is untouched while writing");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert_eq!(f.finish().unwrap(), target);
        assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644);
        }
    }

    #[test]
    fn a_dropped_file_leaves_nothing_and_keeps_the_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"earlier").unwrap();
        let mut f = PendingFile::create(&target).unwrap();
        f.write_all(&[7; 4096]).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&target).unwrap(), b"earlier");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A file name alone writes into the current directory's temporary file.
        assert!(PendingFile::create("relative-name-only").is_ok());
    }
}
