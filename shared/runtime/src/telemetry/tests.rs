use std::sync::{Arc, Mutex};

use super::*;

#[test]
fn masks_card_numbers_and_leaves_identifiers() {
    // Luhn-valid test cards, bare and grouped.
    assert_eq!(
        mask_card_numbers("accNo=6216261000000000018&x=1"),
        "accNo=621626*********0018&x=1"
    );
    assert_eq!(
        mask_card_numbers("card 4111 1111 1111 1111 declined"),
        "card 411111******1111 declined"
    );
    assert_eq!(
        mask_card_numbers("pan 5500-0000-0000-0004."),
        "pan 550000******0004."
    );
    // A card after an unrelated number is still found.
    assert_eq!(
        mask_card_numbers("12 6216261000000000018"),
        "12 621626*********0018"
    );
    // Not Luhn-valid, too short, or a longer identifier (a 21-digit queryId).
    for s in [
        "6216261000000000017",
        "txnTime 20261126093000",
        "queryId 772511261230000000018",
        "123456789012",
        "",
    ] {
        assert_eq!(mask_card_numbers(s), s);
    }
    assert!(matches!(mask_card_numbers("no digits"), Cow::Borrowed(_)));
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture(format: LogFormat, f: impl FnOnce()) -> String {
    let buffer = Buffer::default();
    let out = buffer.clone();
    let subscriber =
        tracing_subscriber::registry().with(LineLayer::new(format, move || buffer.clone()));
    tracing::subscriber::with_default(subscriber, f);
    let bytes = out.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn every_line_carries_the_span_fields_flattened_and_masked() {
    let logs = capture(LogFormat::Json, || {
        let span = crate::notification_span!("verify");
        let _in = span.enter();
        span.record("source", "unionpay");
        span.record("notification_id", "01JABC");
        record_txn_id(&span, Some("unionpay_txn_id"), "772511261230000000018");
        tracing::warn!(error = "bad accNo 6216261000000000018", "rejected");
        span.record("stage", "dead_letter");
        tracing::info!(reason = "bad_signature", "dead-lettered");
    });
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{logs}");
    for line in &lines {
        assert_eq!(line["notification_id"], "01JABC");
        assert_eq!(line["source"], "unionpay");
        assert_eq!(line["psp_txn_id"], "772511261230000000018");
        assert_eq!(line["unionpay_txn_id"], "772511261230000000018");
        assert_eq!(line["direction"], "inbound");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(lines[0]["stage"], "verify");
    assert_eq!(lines[0]["level"], "WARN");
    assert_eq!(lines[0]["error"], "bad accNo 621626*********0018");
    assert_eq!(lines[1]["stage"], "dead_letter");
    assert_eq!(lines[1]["message"], "dead-lettered");
    assert!(!logs.contains("6216261000000000018"));
}

#[test]
fn text_lines_start_with_the_message() {
    let logs = capture(LogFormat::Text, || {
        let span = crate::notification_span!("ingest");
        let _in = span.enter();
        span.record("source", "unionpay");
        tracing::info!(bytes = 12_u64, note = "two words", "accepted");
    });
    assert!(logs.contains(" INFO accepted "), "{logs}");
    assert!(logs.contains(" source=unionpay"), "{logs}");
    assert!(logs.contains(" stage=ingest"), "{logs}");
    assert!(logs.contains(" bytes=12"), "{logs}");
    assert!(logs.contains(" note=\"two words\""), "{logs}");
    assert!(
        !logs.contains("notification_id"),
        "unrecorded fields are left out: {logs}"
    );
}
