//! Any bytes as a queue message body: parsed as an envelope or a pointer,
//! its body checked against its digest, its archive key built; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paynotify_shared::envelope::QueuedBody;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = QueuedBody::parse(data) {
        let _ = body.archive_key();
        let _ = body.notification_id();
        if let QueuedBody::Envelope(e) = body {
            let _ = e.body_bytes();
            let _ = e.to_json();
        }
    }
});
