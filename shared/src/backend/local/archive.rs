//! The archive as files: `{dir}/raw/source=…/date=…/hour=…/{id}.json`,
//! written create-only and durable before `put` returns.
//!
//! Puts are group-committed: one writer thread creates every waiting object
//! exclusively and makes them all durable with one `syncfs` of the archive's
//! filesystem (one `fsync` per file and directory on other systems) before
//! answering any of them.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::backend::hour_in_range;
use crate::ports::{Archive, ArchiveError};

/// Objects made durable together at most.
const MAX_GROUP: usize = 512;

struct PutJob {
    path: PathBuf,
    key: String,
    bytes: Vec<u8>,
    reply: oneshot::Sender<Result<(), ArchiveError>>,
}

/// Files under one directory.
#[derive(Debug, Clone)]
pub struct LocalArchive {
    root: PathBuf,
    writer: mpsc::Sender<PutJob>,
    /// Set when the writer thread has ended.
    stopped: Arc<AtomicBool>,
}

impl std::fmt::Debug for PutJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutJob")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl LocalArchive {
    /// Uses (creating) `root` and starts the writer thread.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn open(root: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        let (tx, rx) = mpsc::channel();
        let sync_root = root.clone();
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        // One writer: two, creating files in the same hour directory, contend
        // on its lock and halved throughput when measured (BENCHMARKS.md).
        std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || {
                // Set however the thread ends, panics included.
                struct Flag(Arc<AtomicBool>);
                impl Drop for Flag {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let _flag = Flag(flag);
                writer_loop(&sync_root, rx);
            })?;
        Ok(Self {
            root,
            writer: tx,
            stopped,
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, ArchiveError> {
        let rel = Path::new(key);
        let safe = !key.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(ArchiveError::InvalidKey(key.to_owned()));
        }
        Ok(self.root.join(rel))
    }
}

fn unavailable(e: std::io::Error) -> ArchiveError {
    ArchiveError::Unavailable(e.to_string())
}

fn writer_loop(root: &Path, rx: mpsc::Receiver<PutJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let results: Vec<Result<(), ArchiveError>> = jobs
            .iter()
            .map(|j| write_unsynced(&j.path, &j.key, &j.bytes))
            .collect();
        let written: Vec<&Path> = jobs
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(j, _)| j.path.as_path())
            .collect();
        let synced = if written.is_empty() {
            Ok(())
        } else {
            make_durable(root, &written)
        };
        for (job, result) in jobs.into_iter().zip(results) {
            let result = match (&synced, result) {
                (Err(e), Ok(())) => Err(ArchiveError::Unavailable(format!("sync: {e}"))),
                (_, r) => r,
            };
            let _ = job.reply.send(result);
        }
    }
}

/// Creates the object's file exclusively (`O_CREAT|O_EXCL`: an existing name
/// is `AlreadyExists`, never overwritten) and writes it. It becomes durable in
/// the group's sync; a put is answered only after that, so an object that can
/// be incomplete after a crash is one whose put was never acknowledged.
fn write_unsynced(path: &Path, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    let mut file = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path
                .parent()
                .ok_or_else(|| ArchiveError::InvalidKey(key.to_owned()))?;
            std::fs::create_dir_all(dir).map_err(unavailable)?;
            create()
        }
        other => other,
    }
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => ArchiveError::AlreadyExists(key.to_owned()),
        _ => unavailable(e),
    })?;
    if let Err(e) = file.write_all(bytes) {
        // Do not leave a partial object under the name.
        let _ = std::fs::remove_file(path);
        return Err(unavailable(e));
    }
    Ok(())
}

/// One `syncfs` flushes every file and directory entry written above.
#[cfg(target_os = "linux")]
fn make_durable(root: &Path, _written: &[&Path]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(root)?;
    // SAFETY: `dir` is an open file descriptor for the whole call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn make_durable(_root: &Path, written: &[&Path]) -> std::io::Result<()> {
    for path in written {
        std::fs::File::open(path)?.sync_all()?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, root, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

#[async_trait]
impl Archive for LocalArchive {
    fn fatal(&self) -> Option<String> {
        self.stopped
            .load(Ordering::SeqCst)
            .then(|| "the archive writer has stopped".to_owned())
    }

    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        let path = self.path(key)?;
        let (reply, result) = oneshot::channel();
        let job = PutJob {
            path,
            key: key.to_owned(),
            bytes: bytes.to_vec(),
            reply,
        };
        self.writer
            .send(job)
            .map_err(|_| ArchiveError::Unavailable("archive writer stopped".into()))?;
        result
            .await
            .map_err(|_| ArchiveError::Unavailable("archive writer dropped the request".into()))?
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ArchiveError::NotFound(key.to_owned()))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<Vec<String>, ArchiveError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            walk(&root, &root, &mut keys).map_err(unavailable)?;
            keys.retain(|k| k.starts_with(&prefix) && hour_in_range(k, from, to));
            keys.sort();
            Ok(keys)
        })
        .await
        .map_err(|e| ArchiveError::Unavailable(e.to_string()))?
    }
}
