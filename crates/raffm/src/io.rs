//! Atomic outputs and content hashes.
//!
//! Every stage writes its output folder through a [`StagingDir`]: files go to a hidden
//! sibling folder and the folder is renamed into place only once everything, manifest last,
//! is on disk. An interrupted stage therefore never leaves an output that Make would take
//! as done, and a failed one leaves nothing at all.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A file with its content hash, as manifests record inputs and outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hashes a file without holding it in memory.
pub fn sha256_file(path: &Path) -> Result<FileRecord> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(FileRecord {
        path: path.display().to_string(),
        sha256: hex(&hasher.finalize()),
        bytes,
    })
}

/// Writes a file in chunks and hashes them on a second thread: hashing a large checkpoint
/// costs about as much as writing it, so the two overlap.
struct HashingWriter<'a> {
    file: &'a File,
    chunk: Vec<u8>,
    to_hasher: mpsc::SyncSender<Vec<u8>>,
    bytes: u64,
}

impl HashingWriter<'_> {
    const CHUNK: usize = 4 << 20;

    fn send_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        (&mut &*self.file).write_all(&self.chunk)?;
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(Self::CHUNK));
        self.to_hasher
            .send(chunk)
            .map_err(|_| io::Error::other("the hashing thread stopped"))
    }
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(Self::CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        self.bytes += n as u64;
        if self.chunk.len() == Self::CHUNK {
            self.send_chunk()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send_chunk()
    }
}

/// An output folder under construction; see the module docs.
pub struct StagingDir {
    target: PathBuf,
    staging: PathBuf,
    /// Where records say the files are: the target, or for a folder nested in another
    /// staging folder, its place in the outer folder's target.
    recorded_at: PathBuf,
    written: Vec<FileRecord>,
    committed: bool,
}

impl StagingDir {
    pub fn new(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let name = target
            .file_name()
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: not a usable output folder name",
                    target.display()
                ))
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
        Ok(Self {
            recorded_at: target.clone(),
            target,
            staging,
            written: Vec::new(),
            committed: false,
        })
    }

    /// A folder `name` inside this one, written the same way; its records name the path it
    /// will have once this folder is committed.
    pub fn nested(&self, name: &str) -> Result<Self> {
        let mut inner = StagingDir::new(self.staging.join(name))?;
        inner.recorded_at = self.recorded_at.join(name);
        Ok(inner)
    }

    /// Adds file `name` as a hard link to `existing` (a file already written, whose record
    /// is `record`): identical outputs share their bytes on disk.
    pub fn link(&mut self, name: &str, existing: &Path, record: &FileRecord) -> Result<FileRecord> {
        let path = self.staging.join(name);
        fs::hard_link(existing, &path).map_err(|e| Error::io(&path, e))?;
        let record = FileRecord {
            path: self.recorded_at.join(name).display().to_string(),
            ..record.clone()
        };
        self.written.push(record.clone());
        Ok(record)
    }

    /// Where the folder is being written (files and subfolders may be added here).
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The folder's final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes one file, streaming through `fill`, and records its hash.
    pub fn write_with(
        &mut self,
        name: &str,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<FileRecord> {
        let path = self.staging.join(name);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let (filled, digest, bytes) = std::thread::scope(|scope| {
            let (to_hasher, chunks) = mpsc::sync_channel::<Vec<u8>>(2);
            let hasher = scope.spawn(move || {
                let mut hasher = Sha256::new();
                chunks.iter().for_each(|chunk| hasher.update(&chunk));
                hasher.finalize()
            });
            let mut writer = HashingWriter {
                file: &file,
                chunk: Vec::with_capacity(HashingWriter::CHUNK),
                to_hasher,
                bytes: 0,
            };
            let filled = fill(&mut writer).and_then(|()| writer.flush());
            let bytes = writer.bytes;
            drop(writer); // ends the hasher's loop
            (
                filled,
                hasher.join().expect("hashing does not panic"),
                bytes,
            )
        });
        filled.map_err(|e| Error::io(&path, e))?;
        let record = FileRecord {
            path: self.recorded_at.join(name).display().to_string(),
            sha256: hex(&digest),
            bytes,
        };
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        self.written.push(record.clone());
        Ok(record)
    }

    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<FileRecord> {
        self.write_with(name, |w| w.write_all(bytes))
    }

    /// Files written so far, with their final paths.
    pub fn records(&self) -> &[FileRecord] {
        &self.written
    }

    /// Moves the folder into place, replacing an older one of the same name.
    pub fn commit(mut self) -> Result<Vec<FileRecord>> {
        if self.target.exists() {
            let old = self.staging.with_extension("old");
            fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
            fs::rename(&self.staging, &self.target).map_err(|e| Error::io(&self.target, e))?;
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            fs::rename(&self.staging, &self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        self.committed = true;
        Ok(std::mem::take(&mut self.written))
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Writes one file atomically (temp file in the same folder, then rename).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<FileRecord> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(FileRecord {
        path: path.display().to_string(),
        sha256: sha256_bytes(bytes),
        bytes: bytes.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_commits_atomically_and_cleans_up_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        {
            let mut s = StagingDir::new(&target).unwrap();
            s.write("a.txt", b"abc").unwrap();
            // dropped without commit
        }
        assert!(!target.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "staging folder left behind"
        );

        let mut s = StagingDir::new(&target).unwrap();
        let rec = s.write("a.txt", b"abc").unwrap();
        assert_eq!(
            rec.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        s.commit().unwrap();
        assert_eq!(fs::read(target.join("a.txt")).unwrap(), b"abc");

        // A second commit replaces the folder whole.
        let mut s = StagingDir::new(&target).unwrap();
        s.write("b.txt", b"x").unwrap();
        s.commit().unwrap();
        assert!(!target.join("a.txt").exists());
        assert_eq!(sha256_file(&target.join("b.txt")).unwrap().bytes, 1);
    }
}
