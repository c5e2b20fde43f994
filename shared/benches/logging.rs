//! The cost of one log line of a notification: the `info` line ingest and
//! the worker each write per notification, inside the notification span
//! (fields flattened, card numbers masked), as JSON and as text, written to
//! a sink; and a line the level filter drops.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use paynotify_shared::notification_span;
use paynotify_shared::telemetry::{record_txn_id, LineLayer, LogFormat};
use tracing_subscriber::layer::SubscriberExt;

fn line(c: &mut Criterion, name: &str, format: LogFormat, level: &str) {
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(level))
        .with(LineLayer::new(format, std::io::sink));
    tracing::subscriber::with_default(subscriber, || {
        c.bench_function(name, |b| {
            b.iter(|| {
                let span = notification_span!("apply");
                let _in = span.enter();
                span.record("source", "unionpay");
                span.record("notification_id", "01M8BJHNG5MVG6JG54MFFFZV9T");
                record_txn_id(&span, Some("unionpay_txn_id"), "772511261230000000018");
                tracing::info!(
                    payment_ref = black_box("772511261230000000018"),
                    outcome = "applied",
                    "applied"
                );
            })
        });
    });
}

fn benches(c: &mut Criterion) {
    line(
        c,
        "log/notification_info_line_json",
        LogFormat::Json,
        "info",
    );
    line(
        c,
        "log/notification_info_line_text",
        LogFormat::Text,
        "info",
    );
    line(
        c,
        "log/notification_span_info_filtered_out",
        LogFormat::Json,
        "warn",
    );
}

criterion_group!(group, benches);
criterion_main!(group);
