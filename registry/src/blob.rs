//! Where downloaded blobs go and where pushed blobs come from.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The destination of a blob download.
///
/// The client writes the blob's bytes in order, verifies size and digest,
/// and returns `Ok` only for a good blob: the caller commits the sink then
/// and only then. After a digest or size mismatch the client has called
/// `reset`, so nothing of a bad blob is left; after a transfer that kept
/// failing, the bytes received so far stay for a later resume.
pub trait BlobSink {
    /// Appends `buf` (all of it).
    fn write(&mut self, buf: &[u8]) -> io::Result<()>;

    /// Bytes already in the sink: a download resumes after them with
    /// `Range: bytes=LEN-`.
    fn len(&self) -> u64;

    /// Whether the sink holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every byte written; the next write starts the blob again.
    fn reset(&mut self) -> io::Result<()>;

    /// The bytes already in the sink, for the client to hash before it
    /// resumes after them. `None` (the default) when the sink cannot read
    /// them back: a non-empty sink is then reset and the blob downloaded
    /// whole, since bytes the client has not hashed cannot be verified.
    fn existing(&mut self) -> io::Result<Option<Box<dyn Read + '_>>> {
        Ok(None)
    }
}

impl BlobSink for Vec<u8> {
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.extend_from_slice(buf);
        Ok(())
    }

    fn len(&self) -> u64 {
        Vec::len(self) as u64
    }

    fn reset(&mut self) -> io::Result<()> {
        self.clear();
        Ok(())
    }

    fn existing(&mut self) -> io::Result<Option<Box<dyn Read + '_>>> {
        Ok(Some(Box::new(self.as_slice())))
    }
}

/// A blob written to `PATH.partial` and renamed to `PATH` by
/// [`FileSink::commit`]; a partial file left by an interrupted download
/// is resumed.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    partial: PathBuf,
    file: File,
    len: u64,
}

impl FileSink {
    /// Opens (or creates) `PATH.partial`, keeping what it holds.
    pub fn create(path: &Path) -> io::Result<FileSink> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&partial)?;
        let len = file.metadata()?.len();
        Ok(FileSink {
            path: path.to_owned(),
            partial,
            file,
            len,
        })
    }

    /// Flushes the blob to disk and renames it to its final path.
    pub fn commit(self) -> io::Result<PathBuf> {
        self.file.sync_all()?;
        fs::rename(&self.partial, &self.path)?;
        Ok(self.path)
    }

    /// Removes the partial file.
    pub fn discard(self) -> io::Result<()> {
        fs::remove_file(&self.partial)
    }
}

impl BlobSink for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn reset(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        Ok(())
    }

    fn existing(&mut self) -> io::Result<Option<Box<dyn Read + '_>>> {
        let file = File::open(&self.partial)?;
        Ok(Some(Box::new(file.take(self.len))))
    }
}

/// The content of a blob to push; opened once per upload attempt.
pub trait BlobSource: Sync {
    /// A reader from the blob's first byte.
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>>;
}

impl BlobSource for Path {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(File::open(self)?))
    }
}

impl BlobSource for PathBuf {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        self.as_path().open()
    }
}

impl BlobSource for [u8] {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(self))
    }
}

impl BlobSource for Vec<u8> {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(self.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_resumes_resets_and_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        let mut sink = FileSink::create(&path).expect("create");
        sink.write(b"hello ").expect("write");
        drop(sink);
        let mut sink = FileSink::create(&path).expect("reopen");
        assert_eq!(sink.len(), 6, "an interrupted download's bytes are kept");
        let mut seen = Vec::new();
        sink.existing()
            .expect("existing")
            .expect("readable")
            .read_to_end(&mut seen)
            .expect("read");
        assert_eq!(seen, b"hello ");
        sink.reset().expect("reset");
        assert!(sink.is_empty());
        sink.write(b"world").expect("write");
        assert!(!path.exists(), "nothing at the final path before commit");
        assert_eq!(sink.commit().expect("commit"), path);
        assert_eq!(fs::read(&path).expect("read"), b"world");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1);
    }
}
