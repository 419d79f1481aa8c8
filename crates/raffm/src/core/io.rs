//! Atomic outputs and content hashes.
//!
//! Every stage writes its output folder through a [`StagingDir`]: files go to a hidden
//! sibling folder and the folder is renamed into place only once everything, manifest last,
//! is on disk. An interrupted stage therefore never leaves an output that Make would take
//! as done, and a failed one leaves nothing at all.
//!
//! A writer holds a lock on its output ([`OutputLock`]) while it writes: a second process
//! writing the same output is refused with a clear message, and what a killed writer left
//! behind (hidden staging folders) is removed by the next one. [`check_output_apart`]
//! refuses an output that is, contains or lies inside one of the command's inputs.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::error::{Error, Result};

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

/// The first 12 characters of a hash, for messages; a recorded value that is not plain hex
/// (from a hand-edited manifest) is shown whole rather than cut inside a character.
pub fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
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

/// The sha256 of a dataset: of the file, or of a folder (an image folder) the sha256 of
/// its files' relative paths and hashes, in sorted order, so that a renamed, added,
/// removed or changed image changes it.
pub fn sha256_data(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return Ok(sha256_file(path)?.sha256);
    }
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                out.push((relative.display().to_string(), sha256_file(&path)?.sha256));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(path, path, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    for (name, hash) in files {
        hasher.update(format!("{name}\0{hash}\n").as_bytes());
    }
    Ok(hex(&hasher.finalize()))
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

/// Exclusive right to write one output (a folder or a file), held through a lock file
/// `.NAME.lock` beside it. A second process that asks for it is refused at once. The lock
/// file is removed when the lock is released; a lock file left by a killed process holds
/// no lock (the kernel drops it with the process) and is taken over.
pub struct OutputLock {
    path: PathBuf,
    file: Option<File>,
}

impl OutputLock {
    /// Takes the lock of output `name` in folder `parent` (which must exist).
    pub fn acquire(parent: &Path, name: &str, target: &Path) -> Result<Self> {
        let path = parent.join(format!(".{name}.lock"));
        loop {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(Error::Invalid(format!(
                        "{}: another process is writing it right now; wait for it to finish",
                        target.display()
                    )))
                }
                Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            // A previous holder may have removed the file between our open and our lock:
            // then we hold a lock on a file nobody else will see. Start again.
            if same_file(&file, &path) {
                return Ok(Self {
                    path,
                    file: Some(file),
                });
            }
        }
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still locked, so nobody can take a lock on it and keep using it.
        let _ = fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

/// Removes what interrupted writers of output `name` left in `parent`: hidden staging
/// folders or files `.NAME.partial-*`. Only called with the output's lock held, so none
/// of them belongs to a live writer.
fn remove_stale_partials(parent: &Path, name: &str) -> Result<()> {
    let prefix = format!(".{name}.partial-");
    let entries = fs::read_dir(parent).map_err(|e| Error::io(parent, e))?;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        removed.map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// The output's file name and its parent folder (created if missing).
fn output_parts(target: &Path) -> Result<(String, PathBuf)> {
    let name = target
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| Error::Invalid(format!("{}: not a usable output name", target.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    Ok((name, parent))
}

/// An absolute, normalised form of `path`, whether or not it exists: the longest existing
/// ancestor canonicalised (links resolved), the rest appended.
fn absolute(path: &Path) -> PathBuf {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_path_buf());
    for name in rest.into_iter().rev() {
        match name.to_str() {
            Some("..") => {
                out.pop();
            }
            Some(".") => {}
            _ => out.push(name),
        }
    }
    out
}

/// `path` relative to the folder `base` (both made absolute first): `../data/x.csv`.
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let (path, base) = (absolute(path), absolute(base));
    let common = path
        .components()
        .zip(base.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in base.components().skip(common) {
        out.push("..");
    }
    for c in path.components().skip(common) {
        out.push(c);
    }
    out
}

/// Refuses an output that is, contains or lies inside one of the inputs: writing it would
/// destroy an input. Each path comes with the option that named it, for the message.
pub fn check_output_apart(output: (&str, &Path), inputs: &[(&str, &Path)]) -> Result<()> {
    let (out_flag, out) = output;
    let out_abs = absolute(out);
    for &(flag, input) in inputs {
        let in_abs = absolute(input);
        let relation = if out_abs == in_abs {
            "is the same path as"
        } else if out_abs.starts_with(&in_abs) {
            "lies inside"
        } else if in_abs.starts_with(&out_abs) {
            "contains"
        } else {
            continue;
        };
        return Err(Error::Invalid(format!(
            "{out_flag} {} {relation} {flag} {}: writing it would destroy an input; choose another output",
            out.display(),
            input.display()
        )));
    }
    Ok(())
}

/// Checks a client id used as a folder name: one path component of letters, digits, `_`,
/// `-` and `.`, not `.` or `..`.
pub fn check_client_id(id: &str) -> Result<()> {
    let safe = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if safe {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "client id `{id}` is not a plain name (letters, digits, `_`, `-`, `.`)"
        )))
    }
}

/// An output folder under construction; see the module docs.
pub struct StagingDir {
    target: PathBuf,
    staging: PathBuf,
    /// Held from creation to commit or drop; `None` for a folder nested in another, which
    /// the outer folder's lock covers.
    _lock: Option<OutputLock>,
    /// Where records say the files are: the target, or for a folder nested in another
    /// staging folder, its place in the outer folder's target.
    recorded_at: PathBuf,
    written: Vec<FileRecord>,
    committed: bool,
}

impl StagingDir {
    pub fn new(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let (name, parent) = output_parts(&target)?;
        let lock = OutputLock::acquire(&parent, &name, &target)?;
        Self::create(target, &name, &parent, Some(lock))
    }

    fn create(
        target: PathBuf,
        name: &str,
        parent: &Path,
        lock: Option<OutputLock>,
    ) -> Result<Self> {
        remove_stale_partials(parent, name)?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
        Ok(Self {
            recorded_at: target.clone(),
            target,
            staging,
            _lock: lock,
            written: Vec::new(),
            committed: false,
        })
    }

    /// A folder `name` inside this one, written the same way; its records name the path it
    /// will have once this folder is committed.
    pub fn nested(&self, name: &str) -> Result<Self> {
        let mut inner = Self::create(self.staging.join(name), name, &self.staging, None)?;
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

/// Writes one file atomically (temp file in the same folder, then rename), under the
/// file's lock.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<FileRecord> {
    let (name, parent) = output_parts(path)?;
    let _lock = OutputLock::acquire(&parent, &name, path)?;
    remove_stale_partials(&parent, &name)?;
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
    #[test]
    fn a_folder_hash_follows_its_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("cat")).unwrap();
        std::fs::write(d.path().join("cat/1.png"), b"a").unwrap();
        let first = super::sha256_data(d.path()).unwrap();
        assert_eq!(first, super::sha256_data(d.path()).unwrap());
        std::fs::rename(d.path().join("cat/1.png"), d.path().join("cat/2.png")).unwrap();
        let renamed = super::sha256_data(d.path()).unwrap();
        assert_ne!(first, renamed);
        std::fs::write(d.path().join("cat/2.png"), b"b").unwrap();
        assert_ne!(renamed, super::sha256_data(d.path()).unwrap());
    }

    use super::*;

    #[test]
    fn short_hashes_never_cut_inside_a_character() {
        assert_eq!(short_hash(&"ab".repeat(32)), "abababababab");
        assert_eq!(short_hash("abc"), "abc");
        // Byte 12 falls inside an `é`: shown whole instead of panicking.
        let odd = format!("a{}", "é".repeat(6));
        assert_eq!(short_hash(&odd), odd);
    }

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
