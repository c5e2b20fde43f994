//! The archive as files: `{dir}/raw/source=…/date=…/hour=…/{id}.json`,
//! written create-only and fsync'd (file and directory) before `put` returns.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::backend::hour_in_range;
use crate::ports::{Archive, ArchiveError};

/// Files under one directory.
#[derive(Debug, Clone)]
pub struct LocalArchive {
    root: PathBuf,
}

impl LocalArchive {
    /// Uses (creating) `root`.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn open(root: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        Ok(Self { root })
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

/// Writes to a temporary file, fsyncs it, then links it to its final name
/// (which fails if the name exists) and fsyncs the directory: a crash leaves
/// either no object or the whole object, never a partial one.
fn put_sync(path: &Path, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
    let dir = path
        .parent()
        .ok_or_else(|| ArchiveError::InvalidKey(key.to_owned()))?;
    std::fs::create_dir_all(dir).map_err(unavailable)?;
    if path.exists() {
        return Err(ArchiveError::AlreadyExists(key.to_owned()));
    }
    let tmp = dir.join(format!(".tmp-{}", ulid::Ulid::new()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ArchiveError::AlreadyExists(key.to_owned()))
        }
        Err(e) => return Err(unavailable(e)),
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(unavailable)
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
        } else if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Archive for LocalArchive {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        let path = self.path(key)?;
        let (key, bytes) = (key.to_owned(), bytes.to_vec());
        tokio::task::spawn_blocking(move || put_sync(&path, &key, &bytes))
            .await
            .map_err(|e| ArchiveError::Unavailable(e.to_string()))?
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
            keys.retain(|k| k.starts_with(&prefix));
            keys.retain(|k| hour_in_range(k, from, to));
            keys.sort();
            Ok(keys)
        })
        .await
        .map_err(|e| ArchiveError::Unavailable(e.to_string()))?
    }
}
