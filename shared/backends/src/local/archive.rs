//! The archive as files under one directory, e.g.
//! `{dir}/raw/source=…/date=…/hour=…/{first-id}-{n}.ndjson`, written
//! create-only and durable before `put` returns.
//!
//! Each put writes its file exclusively, `fdatasync`s it and syncs its
//! directory, on a blocking thread of its own: puts run in parallel and no
//! put waits for another's data (ingest groups notifications into segments,
//! so a put carries many of them; see `paynotify_ingest::segmenter`).

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::hour_in_range;
use crate::ports::{Archive, ArchiveError, Cause};

/// Files under one directory.
#[derive(Debug, Clone)]
pub struct LocalArchive {
    root: PathBuf,
    /// Directories whose entries, up to the root, this process has synced:
    /// a put into one of them syncs only its own directory.
    durable: Arc<Mutex<HashSet<PathBuf>>>,
}

impl LocalArchive {
    /// Uses (creating) `root`.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn open(root: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            durable: Arc::default(),
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
    ArchiveError::Unavailable(Cause::of(e))
}

/// Creates the object's file exclusively (`O_CREAT|O_EXCL`: an existing name
/// is `AlreadyExists`, never overwritten), writes it, and makes it durable:
/// the file's data (`fdatasync`), then its directory entry, and the entries
/// of its parent directories up to the root until this process has synced
/// them once (another put may have created the directory and not yet
/// synced its parents). A put that fails removes what it wrote; one
/// cut short by a crash can leave a partial file, never acknowledged, which
/// readers detect (`segment::records`).
fn write_durable(
    root: &Path,
    path: &Path,
    key: &str,
    bytes: &[u8],
    durable: &Mutex<HashSet<PathBuf>>,
) -> Result<(), ArchiveError> {
    let dir = path
        .parent()
        .ok_or_else(|| ArchiveError::InvalidKey(key.to_owned()))?;
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    let mut file = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
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
        let known = durable.lock().is_ok_and(|d| d.contains(dir));
        if !known {
            // The directories' own entries, up to the archive's root, until
            // this process knows them durable: a directory another put
            // created may not be yet (that put syncs its parents after its
            // own data), and this put must not be acknowledged first.
            let mut d = dir;
            while let Some(parent) = d.parent() {
                sync_dir(parent)?;
                if parent == root || !parent.starts_with(root) {
                    break;
                }
                d = parent;
            }
            if let Ok(mut d) = durable.lock() {
                d.insert(dir.to_owned());
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
    #[cfg(test)]
    tests::SYNCED.lock().unwrap().push(dir.to_owned());
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
        let durable = self.durable.clone();
        tokio::task::spawn_blocking(move || write_durable(&root, &path, &key, &bytes, &durable))
            .await
            .map_err(|e| ArchiveError::Unavailable(Cause::of(e)))?
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
        .map_err(|e| ArchiveError::Unavailable(Cause::of(e)))?
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
        .map_err(|e| ArchiveError::Unavailable(Cause::of(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every directory synced, in order, by every test of this module.
    pub(super) static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    fn synced_under(root: &Path) -> Vec<PathBuf> {
        let all = SYNCED.lock().unwrap();
        all.iter()
            .filter(|d| d.starts_with(root))
            .map(|d| d.strip_prefix(root).unwrap().to_owned())
            .collect()
    }

    /// A put into a directory another put created (and has not yet made
    /// durable: it syncs its parents after its own data) syncs the parents
    /// itself; once this process has synced them, a put syncs only its own
    /// directory.
    #[tokio::test]
    async fn every_put_syncs_the_parents_until_they_are_known_durable() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        let archive = LocalArchive::open(root.clone()).unwrap();
        std::fs::create_dir_all(root.join("raw/date=1/hour=2")).unwrap();
        archive.put("raw/date=1/hour=2/a", b"a").await.unwrap();
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            synced_under(&root),
            [p("raw/date=1/hour=2"), p("raw/date=1"), p("raw"), p("")]
        );
        archive.put("raw/date=1/hour=2/b", b"b").await.unwrap();
        assert_eq!(synced_under(&root).len(), 5);
        assert_eq!(synced_under(&root)[4], p("raw/date=1/hour=2"));
    }
}
