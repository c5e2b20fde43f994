//! The archive as files under one directory, e.g.
//! `{dir}/raw/source=…/date=…/hour=…/{first-id}-{n}.ndjson`, written
//! create-only and durable before `put` returns.
//!
//! Each put writes its file exclusively, `fdatasync`s it and syncs its
//! directory, on a blocking thread of its own: puts run in parallel and no
//! put waits for another's data (ingest groups notifications into segments,
//! so a put carries many of them; see `paynotify_ingest::segmenter`).

use std::io::{Read, Seek, SeekFrom, Write};
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

/// Creates the object's file exclusively (`O_CREAT|O_EXCL`: an existing name
/// is `AlreadyExists`, never overwritten), writes it, and makes it durable:
/// the file's data (`fdatasync`), then its directory entry (and those of
/// directories created for it). A put that fails removes what it wrote; one
/// cut short by a crash can leave a partial file, never acknowledged, which
/// readers detect (`segment::records`).
fn write_durable(root: &Path, path: &Path, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
    let dir = path
        .parent()
        .ok_or_else(|| ArchiveError::InvalidKey(key.to_owned()))?;
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    let mut new_dirs = false;
    let mut file = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
            new_dirs = true;
            create()
        }
        other => other,
    }
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => ArchiveError::AlreadyExists(key.to_owned()),
        _ => unavailable(e),
    })?;
    let written = file.write_all(bytes).and_then(|()| file.sync_data());
    let synced = written.and_then(|()| {
        sync_dir(dir)?;
        if new_dirs {
            // The new directories' own entries, up to the archive's root.
            let mut d = dir;
            while let Some(parent) = d.parent() {
                sync_dir(parent)?;
                if parent == root || !parent.starts_with(root) {
                    break;
                }
                d = parent;
            }
        }
        Ok(())
    });
    if let Err(e) = synced {
        // Do not leave an object that was not acknowledged under the name.
        let _ = std::fs::remove_file(path);
        return Err(unavailable(e));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn not_found(key: &str, e: std::io::Error) -> ArchiveError {
    if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::UnexpectedEof {
        ArchiveError::NotFound(key.to_owned())
    } else {
        unavailable(e)
    }
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
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        let path = self.path(key)?;
        let (root, key, bytes) = (self.root.clone(), key.to_owned(), bytes.to_vec());
        tokio::task::spawn_blocking(move || write_durable(&root, &path, &key, &bytes))
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

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, ArchiveError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(&path).map_err(|e| not_found(&key, e))?;
            let size = file.metadata().map_err(unavailable)?.len();
            if offset.checked_add(length).is_none_or(|end| end > size) {
                return Err(ArchiveError::NotFound(format!(
                    "{key} bytes {offset}+{length}"
                )));
            }
            file.seek(SeekFrom::Start(offset)).map_err(unavailable)?;
            let mut bytes = vec![0; usize::try_from(length).unwrap_or(usize::MAX)];
            file.read_exact(&mut bytes)
                .map_err(|e| not_found(&format!("{key} bytes {offset}+{length}"), e))?;
            Ok(bytes)
        })
        .await
        .map_err(|e| ArchiveError::Unavailable(e.to_string()))?
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
