//! Any bytes as a queue message body: parsed as an envelope or a pointer,
//! its body checked against its digest, its location and retry pointer
//! built; the same bytes as an archive segment and as a printed location.
//! Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paynotify_records::envelope::QueuedBody;
use paynotify_records::segment::{self, Location};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = QueuedBody::parse(data) {
        let _ = body.location();
        let _ = body.notification_id();
        let _ = body.item();
        if let Some(retry) = body.retry().copied() {
            let again = body.retried(retry);
            let back = QueuedBody::parse(&again).expect("a retry pointer parses");
            assert_eq!(back.location(), body.location());
            assert_eq!(back.item(), body.item());
        }
        if let QueuedBody::Envelope(e) = body {
            let _ = e.body_bytes();
            let _ = e.to_json();
            let _ = e.partition();
            let _ = e.to_segment();
        }
    }
    // A segment named for three records, holding these bytes.
    if let Ok(records) = segment::records("raw/source=s/date=d/hour=h/01J-3.ndjson", data) {
        for (at, line) in records {
            assert_eq!(at.span.map(|s| s[1] as usize), Some(line.len()));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(at) = Location::parse(text) {
            assert_eq!(Location::parse(&at.to_string()), Some(at));
        }
    }
});
