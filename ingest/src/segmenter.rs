//! Group commit of notifications into archive segments.
//!
//! The first notification of a source and hour opens a group and starts its
//! commit task; those that arrive while it is open join it. The task waits
//! for the window (or until the group is full: `segment_max_records` or
//! `segment_max_bytes`; or not at all, with `segment_seal_when_idle`, when
//! no segment is being written), then for one of `segment_writers` permits, seals
//! the group and puts it as one segment. Each member learns its place in
//! the segment when the group is sealed ([`Segmenter::place`]), so its queue
//! send can run while the segment is written, and then whether the put
//! succeeded ([`Durable`]); ingest answers 200 only after both, so a 200
//! still means "durable". Groups of different partitions, and successive
//! groups of one, are written in parallel up to the permits; while all
//! permits are taken, groups keep filling, so the segments grow with the
//! load and the archive's calls do not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use paynotify_config::{BackendKind, Config};
use paynotify_ports::{Archive, ArchiveError};
use paynotify_records::segment::{self, Location};
use tokio::sync::{oneshot, Notify, Semaphore};

/// How segments are formed.
#[derive(Debug, Clone, Copy)]
pub struct SegmentSettings {
    pub window: Duration,
    /// Skip the window when no segment is being written.
    pub seal_when_idle: bool,
    pub max_records: usize,
    pub max_bytes: usize,
    pub writers: usize,
}

impl SegmentSettings {
    /// The window and writers when `segment_window_ms` and
    /// `segment_writers` are not set, by backend. Local (BENCHMARKS.md): on
    /// 2 cores 1 ms and 4 writers gave the most notifications per second at
    /// 64 connections and the lowest p99 at 5,000/s; on 16 cores 16 writers
    /// gave 15-17% more than 4, so one writer per core, 4 to 16.
    pub fn defaults(kind: BackendKind) -> (Duration, usize) {
        match kind {
            BackendKind::Local => (Duration::from_millis(1), local_writers()),
            BackendKind::Aws => (Duration::from_millis(50), 16),
        }
    }

    /// The settings of `config`.
    pub fn of(config: &Config) -> Self {
        let ingest = &config.ingest;
        let (window, writers) = Self::defaults(config.backend.kind);
        Self {
            window: ingest
                .segment_window_ms
                .map_or(window, Duration::from_millis),
            seal_when_idle: ingest
                .segment_seal_when_idle
                .unwrap_or(config.backend.kind == BackendKind::Local),
            max_records: ingest.segment_max_records.max(1),
            max_bytes: ingest.segment_max_bytes,
            writers: ingest.segment_writers.unwrap_or(writers).max(1),
        }
    }
}

/// Local segment writers when unset: one per core, at least 4, at most 16.
fn local_writers() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().clamp(4, 16))
}

/// What a member gets back: where its envelope is, and its JSON again.
pub type Appended = (Location, Vec<u8>);

/// A notification's place in a sealed segment, known before the segment is
/// durable.
#[derive(Debug)]
pub struct Placed {
    /// Where the envelope will be once the segment is durable.
    pub at: Location,
    /// The envelope's JSON, handed back (the segment holds its own copy).
    pub json: Vec<u8>,
    /// Whether the segment's put succeeded.
    pub durable: Durable,
}

/// The outcome of a sealed segment's put, awaited by each of its members.
#[derive(Debug)]
pub struct Durable(oneshot::Receiver<Result<(), ArchiveError>>);

impl Durable {
    /// Waits until the segment is durable.
    ///
    /// # Errors
    /// The archive's error when the put failed (no member of the segment is
    /// durable then).
    pub async fn wait(self) -> Result<(), ArchiveError> {
        self.0.await.unwrap_or_else(|_| Err(writer_ended()))
    }
}

fn writer_ended() -> ArchiveError {
    ArchiveError::Unavailable("the segment's writer ended before answering".into())
}

struct Member {
    id: String,
    json: Vec<u8>,
    placed: oneshot::Sender<Placed>,
}

struct Group {
    members: Vec<Member>,
    bytes: usize,
    /// Told when the group filled up, so its task stops waiting.
    full: Arc<Notify>,
}

impl Group {
    fn is_full(&self, s: &SegmentSettings) -> bool {
        self.members.len() >= s.max_records || self.bytes >= s.max_bytes
    }
}

/// Groups notifications into segments and writes them.
pub struct Segmenter {
    archive: Arc<dyn Archive>,
    settings: SegmentSettings,
    /// The open group of each partition.
    open: Mutex<HashMap<String, Arc<Mutex<Group>>>>,
    writers: Arc<Semaphore>,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves nothing half-changed that
    // matters: members of a group whose task died get an error.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Segmenter {
    /// Writes segments to `archive`.
    pub fn new(archive: Arc<dyn Archive>, settings: SegmentSettings) -> Arc<Self> {
        Arc::new(Self {
            archive,
            writers: Arc::new(Semaphore::new(settings.writers)),
            settings,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Adds the envelope `json` of notification `id` to a segment of
    /// `partition` and returns once that segment is durable, with the
    /// envelope's location.
    ///
    /// # Errors
    /// The archive's error when the segment could not be written (no member
    /// of it is durable then).
    pub async fn append(
        self: &Arc<Self>,
        partition: String,
        id: String,
        json: Vec<u8>,
    ) -> Result<Appended, ArchiveError> {
        let Placed { at, json, durable } = self.place(partition, id, json).await?;
        durable.wait().await?;
        Ok((at, json))
    }

    /// Adds the envelope `json` of notification `id` to a segment of
    /// `partition` and returns once that segment is sealed, with the
    /// envelope's location in it; the segment is durable when
    /// [`Placed::durable`] says so.
    ///
    /// # Errors
    /// `Unavailable` when the segment's task ended before sealing it.
    pub async fn place(
        self: &Arc<Self>,
        partition: String,
        id: String,
        json: Vec<u8>,
    ) -> Result<Placed, ArchiveError> {
        let (placed, answer) = oneshot::channel();
        let member = Member { id, json, placed };
        let opened = {
            let mut open = lock(&self.open);
            match open.get(&partition) {
                Some(group) => {
                    let mut g = lock(group);
                    g.bytes += member.json.len() + 1;
                    g.members.push(member);
                    if g.is_full(&self.settings) {
                        g.full.notify_one();
                        drop(g);
                        open.remove(&partition);
                    }
                    None
                }
                None => {
                    let group = Group {
                        bytes: member.json.len() + 1,
                        members: vec![member],
                        full: Arc::new(Notify::new()),
                    };
                    let full = group.is_full(&self.settings);
                    let group = Arc::new(Mutex::new(group));
                    if !full {
                        open.insert(partition.clone(), group.clone());
                    }
                    Some((group, full))
                }
            }
        };
        if let Some((group, full)) = opened {
            tokio::spawn(self.clone().commit(partition, group, full));
        }
        answer.await.map_err(|_| writer_ended())
    }

    /// Waits for the window (or a full group) and a writer, seals the group,
    /// tells every member its place, writes the group as one segment, then
    /// tells every member whether the put succeeded. With `seal_when_idle`,
    /// a group whose task starts while no segment is being written does not
    /// wait for the window: there is no put to wait behind, and those who
    /// arrive during this one's put form the next group, which waits.
    async fn commit(self: Arc<Self>, partition: String, group: Arc<Mutex<Group>>, full: bool) {
        let idle = self.settings.seal_when_idle
            && self.writers.available_permits() == self.settings.writers;
        if !full && !idle && !self.settings.window.is_zero() {
            let notify = lock(&group).full.clone();
            tokio::select! {
                () = tokio::time::sleep(self.settings.window) => {}
                () = notify.notified() => {}
            }
        }
        let permit = self.writers.clone().acquire_owned().await;
        {
            let mut open = lock(&self.open);
            if open.get(&partition).is_some_and(|g| Arc::ptr_eq(g, &group)) {
                open.remove(&partition);
            }
        }
        // Sealed: nobody can join any more.
        let members = std::mem::take(&mut lock(&group).members);
        let Some(first) = members.first() else {
            return;
        };
        let key = segment::segment_key(&partition, &first.id, members.len());
        let (bytes, at) = segment::build(&key, members.iter().map(|m| m.json.as_slice()));
        let mut outcomes = Vec::with_capacity(members.len());
        for (member, at) in members.into_iter().zip(at) {
            let (outcome, durable) = oneshot::channel();
            outcomes.push(outcome);
            // A member that stopped waiting (its request was dropped) is
            // still written: its segment is shared.
            let _ = member.placed.send(Placed {
                at,
                json: member.json,
                durable: Durable(durable),
            });
        }
        let result = segment::put_once(self.archive.as_ref(), &key, &bytes).await;
        drop(permit);
        drop(bytes);
        for outcome in outcomes {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(ArchiveError::Unavailable(e.to_string().into())),
            };
            let _ = outcome.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paynotify_backends::local::LocalArchive;
    use paynotify_runtime::faults::{Faults, FaultyArchive};
    use tokio::time::Instant;

    const WINDOW: Duration = Duration::from_secs(10);
    /// How long each put takes (tokio's clock): longer than the window.
    const PUT: Duration = Duration::from_secs(60);

    /// A segmenter whose puts each take `PUT`, into a directory's archive.
    fn slow_puts(seal_when_idle: bool) -> (tempfile::TempDir, Arc<Segmenter>) {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        faults.set_latency(PUT);
        let archive = Arc::new(FaultyArchive {
            inner: Arc::new(LocalArchive::open(dir.path().to_owned()).unwrap()),
            faults,
        });
        let settings = SegmentSettings {
            window: WINDOW,
            seal_when_idle,
            max_records: 1_000,
            max_bytes: 1 << 20,
            writers: 4,
        };
        (dir, Segmenter::new(archive, settings))
    }

    /// Places notification `id` and says how long (tokio's clock) it took.
    async fn place(s: &Arc<Segmenter>, id: &str) -> (Placed, Duration) {
        let started = Instant::now();
        let partition = "raw/source=u/date=2026-12-03/hour=22/".to_owned();
        let placed = s.place(partition, id.into(), b"{}".to_vec()).await.unwrap();
        (placed, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_segment_being_written_a_group_is_sealed_without_the_window() {
        let (_dir, s) = slow_puts(true);
        let (first, waited) = place(&s, "01A").await;
        assert!(waited < WINDOW, "{waited:?}");
        assert!(first.at.key.ends_with("/01A-1.ndjson"), "{}", first.at);
        // Its put is in flight: the next group gathers for the window.
        let (second, waited) = place(&s, "01B").await;
        assert!(waited >= WINDOW, "{waited:?}");
        first.durable.wait().await.unwrap();
        second.durable.wait().await.unwrap();
        // Nothing in flight again.
        let (third, waited) = place(&s, "01C").await;
        assert!(waited < WINDOW, "{waited:?}");
        third.durable.wait().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_seal_when_idle_every_group_waits_for_the_window() {
        let (_dir, s) = slow_puts(false);
        let (first, waited) = place(&s, "01A").await;
        assert!(waited >= WINDOW, "{waited:?}");
        first.durable.wait().await.unwrap();
    }

    #[test]
    fn settings_take_the_backends_defaults_unless_set() {
        let mut config = Config::from_toml("", std::path::Path::new("/")).unwrap();
        let local = SegmentSettings::of(&config);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(
            (local.window, local.writers, local.seal_when_idle),
            (Duration::from_millis(1), cores.clamp(4, 16), true)
        );
        config.backend.kind = BackendKind::Aws;
        let aws = SegmentSettings::of(&config);
        assert_eq!(
            (aws.window, aws.writers, aws.seal_when_idle),
            (Duration::from_millis(50), 16, false)
        );
        config.ingest.segment_window_ms = Some(0);
        config.ingest.segment_writers = Some(3);
        config.ingest.segment_seal_when_idle = Some(true);
        let set = SegmentSettings::of(&config);
        assert_eq!(
            (set.window, set.writers, set.seal_when_idle),
            (Duration::ZERO, 3, true)
        );
    }
}
