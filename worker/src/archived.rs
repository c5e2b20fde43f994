//! Where the archive holds a notification that came on the queue inline,
//! checked before the worker sends messages that point to it: the items of
//! a notification it splits, a retried message's fresh delivery.
//!
//! Ingest sends a notification's message while its segment is being written
//! (`paynotify_ingest::store`), so the location an inline message carries
//! names a segment that may not be there yet, or never: its put failed
//! after the message was sent (ingest answered 503 and the PSP sends the
//! notification again), or ingest died first. A pointer to it would be
//! dead-lettered as `missing_archive_object`, although the message holds
//! every byte. So the worker reads the envelope back at that location;
//! when it is not there and the notification is younger than [`SETTLE`],
//! the put may still be running: it looks again a few times within about a
//! second (a worker that received the message before the segment's put
//! ended, as on S3, finds it then), and else the caller retries later; once
//! the notification is older, the worker archives the envelope alone and
//! points there.

use paynotify_ports::{Archive, ArchiveError};
use paynotify_records::envelope::Envelope;
use paynotify_records::segment::{self, Location, ReadError};
use time::OffsetDateTime;
use tracing::warn;

/// How long after its receipt a notification's segment may still be being
/// written. A put runs for milliseconds (local) to seconds (S3, with the
/// SDK's retries); past this, a segment that does not hold the notification
/// never will.
pub const SETTLE: time::Duration = time::Duration::seconds(60);

/// The pauses before looking again for a young notification's segment.
const LOOK_AGAIN_MS: [u64; 4] = [50, 100, 250, 500];

/// Whether to wait for a young notification's segment, or archive it alone
/// at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Young {
    /// Retry later while the notification is younger than [`SETTLE`].
    Wait,
    /// Archive it alone now (the caller cannot wait: its message is about to
    /// reach the queue's receive limit).
    ArchiveNow,
}

/// Where the archive holds `envelope`, which came inline and says it is at
/// `at`: `at` when the envelope is there, else where it was archived alone
/// (`{partition}{id}-1.ndjson`, or a fresh name when a crash left a torn
/// file under that one).
///
/// # Errors
/// A text for a retry: the archive failed, or (with [`Young::Wait`]) the
/// notification is too young to tell a missing segment from one being
/// written.
pub async fn archived(
    archive: &dyn Archive,
    envelope: &Envelope,
    at: &Location,
    now: OffsetDateTime,
    young: Young,
) -> Result<Location, String> {
    let waits = young == Young::Wait && now - envelope.received_at < SETTLE;
    let pauses = if waits { &LOOK_AGAIN_MS[..] } else { &[] };
    let mut pauses = pauses.iter();
    loop {
        match segment::read_envelope(archive, at, Some(&envelope.id)).await {
            Ok(_) => return Ok(at.clone()),
            // Not there, cut short, or another's: not this notification's place.
            Err(
                ReadError::Archive(ArchiveError::NotFound(_))
                | ReadError::Envelope { .. }
                | ReadError::WrongEnvelope { .. },
            ) => {}
            Err(ReadError::Archive(e)) => return Err(format!("reading {at} back: {e}")),
        }
        match pauses.next() {
            Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(*ms)).await,
            None => break,
        }
    }
    if waits {
        return Err(format!(
            "{at} does not hold the notification yet (its segment may still be being written)"
        ));
    }
    let mut alone = envelope.clone();
    alone.at = None;
    let failed =
        |key: &str, e: ArchiveError| format!("archiving the notification alone at {key}: {e}");
    let (key, bytes, location) = alone.to_segment();
    let location = match segment::put_once(archive, &key, &bytes).await {
        Ok(()) => location,
        Err(ArchiveError::AlreadyExists(_)) => {
            // A torn file of this name: ingest died writing this
            // notification's own segment. The same line (the segment
            // without its newline) under a fresh name.
            let key = segment::segment_key(&alone.partition(), &ulid::Ulid::new().to_string(), 1);
            let (bytes, mut at) = segment::build(&key, [&bytes[..bytes.len() - 1]]);
            segment::put_once(archive, &key, &bytes)
                .await
                .map_err(|e| failed(&key, e))?;
            at.remove(0)
        }
        Err(e) => return Err(failed(&key, e)),
    };
    warn!(
        missing_at = %at,
        archive_key = %location,
        "the notification's segment does not hold it (written after its message was sent, and failed); archived it alone"
    );
    Ok(location)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use paynotify_backends::local::LocalArchive;
    use paynotify_records::envelope::Received;
    use paynotify_runtime::faults::{Faults, FaultyArchive};

    use super::*;

    fn envelope(received_at: OffsetDateTime) -> Envelope {
        Envelope::new(Received {
            source: "adyen",
            received_at,
            remote_addr: None,
            method: "POST",
            path: "/notify/adyen",
            query: None,
            headers: vec![],
            body: b"{\"notificationItems\":[]}",
        })
    }

    /// The envelope as it travels on the queue: with where it says it is.
    fn queued(e: &Envelope, at: &Location) -> Envelope {
        let mut q = e.clone();
        q.at = Some(at.clone());
        q
    }

    fn archive() -> (tempfile::TempDir, LocalArchive) {
        let dir = tempfile::tempdir().unwrap();
        let archive = LocalArchive::open(dir.path().to_path_buf()).unwrap();
        (dir, archive)
    }

    async fn keys(archive: &dyn Archive) -> Vec<String> {
        archive.list("raw/", None, None).await.unwrap()
    }

    #[tokio::test]
    async fn a_segment_that_holds_the_notification_is_pointed_to_as_it_is() {
        let (_dir, archive) = archive();
        let now = OffsetDateTime::now_utc();
        let (e, other) = (envelope(now), envelope(now));
        let key = segment::segment_key(&e.partition(), &other.id, 2);
        let (bytes, at) = segment::build(
            &key,
            [other.to_json(), e.to_json()].iter().map(Vec::as_slice),
        );
        archive.put(&key, &bytes).await.unwrap();
        let found = archived(
            &archive,
            &queued(&e, &at[1]),
            &at[1],
            now,
            Young::ArchiveNow,
        )
        .await;
        assert_eq!(found, Ok(at[1].clone()));
        assert_eq!(keys(&archive).await, vec![key]);
    }

    #[tokio::test]
    async fn a_missing_segment_is_waited_for_while_young_then_archived_alone_once() {
        let (_dir, archive) = archive();
        let now = OffsetDateTime::now_utc();
        let e = envelope(now);
        let key = segment::segment_key(&e.partition(), &e.id, 3);
        let at = Location::span(key, 120, 40);
        let q = queued(&e, &at);
        // Young: its segment may still be being written.
        let young = archived(&archive, &q, &at, now, Young::Wait).await;
        assert!(young
            .unwrap_err()
            .contains("does not hold the notification yet"));
        assert!(keys(&archive).await.is_empty());
        // Past SETTLE, or when the caller cannot wait: archived alone, as
        // ingest archives a notification that arrives by itself.
        let later = now + SETTLE;
        let alone = archived(&archive, &q, &at, later, Young::Wait)
            .await
            .unwrap();
        let (own_key, bytes, own_at) = e.to_segment();
        assert_eq!(alone, own_at);
        assert_eq!(
            archive.get(&own_key).await.unwrap(),
            bytes,
            "archived without `at`"
        );
        // Another delivery of the same message finds it there.
        let again = archived(&archive, &q, &at, now, Young::ArchiveNow).await;
        assert_eq!(again, Ok(own_at));
        assert_eq!(keys(&archive).await, vec![own_key]);
    }

    #[tokio::test]
    async fn a_young_notification_whose_segment_lands_meanwhile_is_found_there() {
        let (_dir, archive) = archive();
        let now = OffsetDateTime::now_utc();
        let e = envelope(now);
        let (key, bytes, at) = e.to_segment();
        let q = queued(&e, &at);
        // The segment's put ends after the worker first looked.
        let late = {
            let archive = archive.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(120)).await;
                archive.put(&key, &bytes).await.unwrap();
            })
        };
        let found = archived(&archive, &q, &at, now, Young::Wait).await;
        late.await.unwrap();
        assert_eq!(found, Ok(at));
        assert_eq!(keys(&archive).await.len(), 1);
    }

    #[tokio::test]
    async fn a_torn_file_under_its_own_name_is_left_and_the_notification_archived_under_another() {
        let (_dir, archive) = archive();
        let now = OffsetDateTime::now_utc();
        let e = envelope(now);
        // Ingest died writing the notification's own segment of one.
        let (key, bytes, at) = e.to_segment();
        archive.put(&key, &bytes[..bytes.len() / 2]).await.unwrap();
        let q = queued(&e, &at);
        let alone = archived(&archive, &q, &at, now, Young::ArchiveNow)
            .await
            .unwrap();
        assert_ne!(alone.key, key);
        let read = segment::read_envelope(&archive, &alone, Some(&e.id))
            .await
            .unwrap();
        assert_eq!(read, e);
        let records = segment::read_object(&archive, &alone.key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(records.len(), 1);
    }

    #[tokio::test]
    async fn an_archive_that_fails_is_a_retry_and_writes_nothing() {
        let (_dir, local) = archive();
        let faults = Faults::new();
        let archive = FaultyArchive {
            inner: Arc::new(local.clone()),
            faults: faults.clone(),
        };
        let now = OffsetDateTime::now_utc();
        let e = envelope(now);
        let (_, _, at) = e.to_segment();
        let q = queued(&e, &at);
        faults.set_down(true);
        let failed = archived(&archive, &q, &at, now, Young::ArchiveNow).await;
        assert!(failed.unwrap_err().contains("reading"));
        // The read goes through, the put fails.
        faults.only(Some(&["put"]));
        let failed = archived(&archive, &q, &at, now, Young::ArchiveNow).await;
        assert!(failed
            .unwrap_err()
            .contains("archiving the notification alone"));
        assert!(keys(&local).await.is_empty());
    }
}
