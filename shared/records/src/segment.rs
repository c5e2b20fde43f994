//! Archive segments: the notifications of one source received within a
//! short window, archived as one object of newline-delimited envelopes,
//! `raw/source=S/date=D/hour=H/{first-ulid}-{n}.ndjson`.
//!
//! A notification's place in the archive is a [`Location`]: the object's key
//! and, inside a segment, the byte offset and length of its line. Readers
//! take a location with a ranged read, or a whole segment with [`records`],
//! which refuses a torn segment: one whose write was cut short by a crash
//! (fewer complete lines than its name says, or a last line without its
//! newline). No notification of a torn segment was acknowledged, because a
//! segment is acknowledged only once all of it is durable; its PSP sends
//! them again.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::envelope::{Envelope, EnvelopeError};
use paynotify_ports::{Archive, ArchiveError};

/// Where an envelope is archived: a whole object, or one line of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Location {
    pub key: String,
    /// `[offset, length]` of the envelope's line (without its newline).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub span: Option<[u64; 2]>,
}

impl Location {
    /// A whole object.
    pub fn whole(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            span: None,
        }
    }

    /// `length` bytes at `offset` of the object at `key`.
    pub fn span(key: impl Into<String>, offset: u64, length: u64) -> Self {
        Self {
            key: key.into(),
            span: Some([offset, length]),
        }
    }

    /// Parses `key` or `key#offset+length` (as `Display` writes it).
    pub fn parse(s: &str) -> Option<Self> {
        match s.rsplit_once('#') {
            None => (!s.is_empty()).then(|| Self::whole(s)),
            Some((key, range)) => {
                let (o, l) = range.split_once('+')?;
                let (o, l) = (o.parse().ok()?, l.parse().ok()?);
                (!key.is_empty()).then(|| Self::span(key, o, l))
            }
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.span {
            None => f.write_str(&self.key),
            Some([o, l]) => write!(f, "{}#{o}+{l}", self.key),
        }
    }
}

/// `raw/source={source}/date={YYYY-MM-DD}/hour={HH}/`: the partition of
/// notifications of `source` received at `t` (in UTC).
pub fn partition(source: &str, t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "raw/source={}/date={:04}-{:02}-{:02}/hour={:02}/",
        source,
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour()
    )
}

/// The key of a segment of `n` envelopes in `partition` whose first
/// envelope has id `first`.
pub fn segment_key(partition: &str, first: &str, n: usize) -> String {
    format!("{partition}{first}-{n}.ndjson")
}

/// The number of envelopes a segment key names; `None` for any other key.
pub fn segment_len(key: &str) -> Option<usize> {
    let name = key.rsplit('/').next()?.strip_suffix(".ndjson")?;
    name.rsplit_once('-')?.1.parse().ok()
}

/// The id of the first (or only) notification in the archived object at
/// `key`: a segment's `{first}-{n}.ndjson`, an older object's `{id}.json`;
/// `None` for any other key.
pub fn first_id(key: &str) -> Option<&str> {
    let name = key.rsplit('/').next()?;
    match segment_len(key) {
        Some(_) => name.rsplit_once('-').map(|(first, _)| first),
        None => name.strip_suffix(".json"),
    }
}

/// Builds a segment of `envelopes` (serialised envelopes, each one line)
/// stored at `key`: its bytes and the location of each envelope.
pub fn build<'a>(
    key: &str,
    envelopes: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<u8>, Vec<Location>) {
    let mut bytes = Vec::new();
    let mut at = Vec::new();
    for json in envelopes {
        at.push(Location::span(key, bytes.len() as u64, json.len() as u64));
        bytes.extend_from_slice(json);
        bytes.push(b'\n');
    }
    (bytes, at)
}

/// A segment that cannot be read whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("torn segment {key}: {why}")]
pub struct Torn {
    pub key: String,
    pub why: String,
}

/// The envelopes in the object at `key`: each line of a segment with its
/// location, or the whole object for a key that is not a segment's (an
/// archive written one object per notification).
///
/// # Errors
/// [`Torn`] when a segment does not hold as many complete lines as its name says.
pub fn records<'a>(key: &str, bytes: &'a [u8]) -> Result<Vec<(Location, &'a [u8])>, Torn> {
    let Some(n) = segment_len(key) else {
        return Ok(vec![(Location::whole(key), bytes)]);
    };
    let torn = |why: String| Torn {
        key: key.to_owned(),
        why,
    };
    if !bytes.ends_with(b"\n") {
        return Err(torn(format!(
            "{} bytes, the last line has no newline",
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    let mut offset = 0usize;
    for line in bytes[..bytes.len() - 1].split(|b| *b == b'\n') {
        if line.is_empty() {
            return Err(torn(format!("an empty line at byte {offset}")));
        }
        out.push((Location::span(key, offset as u64, line.len() as u64), line));
        offset += line.len() + 1;
    }
    if out.len() != n {
        return Err(torn(format!("{} lines, its name says {n}", out.len())));
    }
    Ok(out)
}

/// The lines of a torn segment that ended with their newline (those its
/// write completed), each with its location.
pub fn complete_lines<'a>(key: &str, bytes: &'a [u8]) -> Vec<(Location, &'a [u8])> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for line in bytes[..end].split_inclusive(|b| *b == b'\n') {
        let text = &line[..line.len() - 1];
        if !text.is_empty() {
            out.push((Location::span(key, offset as u64, text.len() as u64), text));
        }
        offset += line.len();
    }
    out
}

/// The envelopes of the archived object at `key`, each with its location
/// (an envelope's bytes, not parsed); `Err(Torn)` inside when the object is
/// a torn segment.
///
/// # Errors
/// The archive's.
pub async fn read_object(
    archive: &dyn Archive,
    key: &str,
) -> Result<Result<Vec<(Location, Vec<u8>)>, Torn>, ArchiveError> {
    let bytes = archive.get(key).await?;
    Ok(records(key, &bytes).map(|r| r.into_iter().map(|(l, b)| (l, b.to_vec())).collect()))
}

/// Reads the bytes at `location`.
///
/// # Errors
/// The archive's.
pub async fn read(archive: &dyn Archive, location: &Location) -> Result<Vec<u8>, ArchiveError> {
    match location.span {
        None => archive.get(&location.key).await,
        Some([offset, length]) => archive.get_range(&location.key, offset, length).await,
    }
}

/// Puts a segment, create-only. A put that finds its key taken by these
/// very bytes succeeded: it is the retry of a put whose reply was lost (an
/// SDK retry after a timeout), or the same segment written by another
/// (workers archiving one notification alone, `paynotify_worker::archived`).
///
/// # Errors
/// The archive's; `AlreadyExists` when the key holds other bytes.
pub async fn put_once(archive: &dyn Archive, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
    match archive.put(key, bytes).await {
        Err(ArchiveError::AlreadyExists(k)) => match archive.get(key).await {
            Ok(stored) if stored == bytes => Ok(()),
            Ok(_) => Err(ArchiveError::AlreadyExists(k)),
            Err(e) => Err(e),
        },
        other => other,
    }
}

/// Why an archived envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{location}: {source}")]
    Envelope {
        location: Location,
        source: EnvelopeError,
    },
    #[error("{location} holds notification {found}, not {expected}")]
    WrongEnvelope {
        location: Location,
        expected: String,
        found: String,
    },
}

/// Reads and parses the envelope at `location`; with `id`, checks that it is
/// that notification's.
///
/// # Errors
/// The archive's, an envelope that does not parse, or another notification's.
pub async fn read_envelope(
    archive: &dyn Archive,
    location: &Location,
    id: Option<&str>,
) -> Result<Envelope, ReadError> {
    let bytes = read(archive, location).await?;
    let envelope = Envelope::from_json(&bytes).map_err(|source| ReadError::Envelope {
        location: location.clone(),
        source,
    })?;
    match id {
        Some(id) if envelope.id != id => Err(ReadError::WrongEnvelope {
            location: location.clone(),
            expected: id.to_owned(),
            found: envelope.id,
        }),
        _ => Ok(envelope),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_print_and_parse() {
        let whole = Location::whole("raw/a.json");
        let span = Location::span("raw/x/01A-3.ndjson", 120, 45);
        assert_eq!(span.to_string(), "raw/x/01A-3.ndjson#120+45");
        for l in [&whole, &span] {
            assert_eq!(Location::parse(&l.to_string()).as_ref(), Some(l));
        }
        for bad in ["", "#1+2", "k#1", "k#a+2", "k#1+-2"] {
            assert_eq!(Location::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn segments_round_trip_and_torn_ones_are_refused() {
        let key = segment_key("raw/source=u/date=2026-11-25/hour=23/", "01A", 3);
        assert_eq!(first_id(&key), Some("01A"));
        assert_eq!(
            first_id("raw/source=u/date=2026-11-25/hour=23/01B.json"),
            Some("01B")
        );
        assert_eq!(
            first_id("raw/source=u/date=2026-11-25/hour=23/01B.txt"),
            None
        );
        assert_eq!(segment_len(&key), Some(3));
        assert_eq!(
            segment_len("raw/source=u/date=2026-11-25/hour=23/01A.json"),
            None
        );
        let lines: [&[u8]; 3] = [b"{\"a\":1}", b"{}", b"{\"c\":\"x\"}"];
        let (bytes, at) = build(&key, lines);
        let read = records(&key, &bytes).unwrap();
        assert_eq!(read.len(), 3);
        for (i, (l, line)) in read.iter().enumerate() {
            assert_eq!(l, &at[i]);
            assert_eq!(*line, lines[i]);
            let [o, n] = l.span.unwrap();
            assert_eq!(&bytes[o as usize..(o + n) as usize], lines[i]);
        }
        // Every cut of the file is torn.
        for cut in 0..bytes.len() {
            assert!(records(&key, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A file holding another count than its name, or a blank line.
        assert!(records(&segment_key("raw/", "01A", 4), &bytes).is_err());
        assert!(records(&key, b"{}\n\n{}\n").is_err());
        // An object of one notification is one record.
        assert_eq!(records("raw/a.json", b"{}").unwrap().len(), 1);
    }
}
