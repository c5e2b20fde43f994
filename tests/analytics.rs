//! The DuckDB queries of `docs/analytics.md`, run as written against an
//! archive with known contents: three payments, one refunded, one
//! delivered three times, one tampered copy, one forged notification, and
//! one notification archived twice (its own segment and a second one).
//! Needs Python with `duckdb` (scripts/test.sh installs it from
//! scripts/requirements-tools.txt and sets `PAYNOTIFY_TEST_PYTHON`); fails
//! loudly without it.

use std::process::Command;

use paynotify::simulate::{tamper, Delivery};
use paynotify_shared::ports::Archive;
use paynotify_shared::{segment, PaymentStatus};
use serde_json::Value;
use support::app::spawn_app;
use support::Kind;

mod support;

fn python() -> String {
    std::env::var("PAYNOTIFY_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "PAYNOTIFY_TEST_PYTHON is not set: tests/analytics.rs runs the DuckDB queries of \
             docs/analytics.md with a Python that has `duckdb` (scripts/requirements-tools.txt). \
             Run scripts/test.sh, or set it to such a Python."
        )
    })
}

/// Archives the purchase of `query_id` a second time, in a segment of its
/// own in the same partition, as when a worker archived it alone
/// (`worker/src/archived.rs`) while its segment's put was still running and
/// that put then succeeded. (Each notification of this test is its own
/// segment, `{id}-1.ndjson`, so the copy takes the name a worker gives it
/// when that one is taken: a fresh id.)
async fn copy_alone(archive: &dyn Archive, query_id: &str) {
    let wanted = format!("queryId={query_id}");
    let (at, envelope) = support::archived(archive)
        .await
        .into_iter()
        .find(|(_, e)| {
            let body = e.body.as_deref().unwrap_or_default();
            body.split('&').any(|field| field == wanted) && body.contains("txnType=01")
        })
        .unwrap_or_else(|| panic!("no archived purchase of {query_id}"));
    let line = segment::read(archive, &at).await.unwrap();
    let key = segment::segment_key(&envelope.partition(), &ulid::Ulid::new().to_string(), 1);
    let (bytes, _) = segment::build(&key, [line.as_slice()]);
    archive.put(&key, &bytes).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_duckdb_query_of_the_analytics_guide_gives_the_known_counts() {
    let python = python();
    let t = spawn_app(Kind::Local).await;
    let sim = &t.sim;
    let accepted = |d: Delivery| assert_eq!(d, Delivery::Accepted(1));
    accepted(sim.send(sim.purchase("an1", 1000)).await);
    accepted(sim.send(sim.purchase("an2", 2000)).await);
    let third = sim.purchase("an3", 3000);
    for _ in 0..3 {
        accepted(sim.send(third.clone()).await);
    }
    t.wait_for_status("an1", PaymentStatus::Paid).await;
    accepted(sim.send(sim.refund("an1", "an1r", 1000)).await);
    accepted(sim.send(tamper(&sim.purchase("an4", 400))).await);
    let forger = t.forger();
    accepted(forger.send(forger.purchase("an5", 500)).await);
    t.wait_until_drained().await;
    t.wait_for_status("an1", PaymentStatus::Refunded).await;

    let config = t.dir.path().join("paynotify.toml");
    let dlq = Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(["dlq", "list", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(dlq.status.success());
    let dlq_json = t.dir.path().join("dlq.json");
    std::fs::write(&dlq_json, &dlq.stdout).unwrap();
    copy_alone(t.app().backends.archive.as_ref(), "an1").await;
    let archive = t.config.backend.data_dir.join("archive/raw");
    let out = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/analytics.py"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/analytics.md"))
        .arg(format!("ARCHIVE={}", archive.display()))
        .arg(format!("DLQ_JSON={}", dlq_json.display()))
        .arg("QUERY_ID=an1")
        .arg("ORDER_ID=oan1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();

    // 2 + 3 + 1 refund + 1 tampered + 1 forged, all in this hour.
    let hours = results["per_source_hour"].as_array().unwrap();
    assert!(!hours.is_empty() && hours.len() <= 2, "{hours:?}");
    let sum = |column: &str| -> u64 { hours.iter().map(|h| h[column].as_u64().unwrap()).sum() };
    assert_eq!(
        (sum("notifications"), sum("distinct_bodies")),
        (8, 6),
        "{hours:?}"
    );
    assert_eq!(hours[0]["source"], "unionpay");

    // The payment and its refund, by queryId or orderId.
    let story = results["one_transaction"].as_array().unwrap();
    let kinds: Vec<_> = story
        .iter()
        .map(|r| {
            (
                r["txn_type"].as_str().unwrap(),
                r["amount_minor"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, vec![("01", 1000), ("04", 1000)], "{story:?}");

    let rejected = results["rejected_with_reason"].as_array().unwrap();
    let reasons: Vec<_> = rejected
        .iter()
        .map(|r| {
            (
                r["query_id"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        vec![("an4", "bad_signature"), ("an5", "untrusted_certificate")]
    );

    let retries = results["psp_retries"].as_array().unwrap();
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(
        (
            retries[0]["query_id"].as_str(),
            retries[0]["deliveries"].as_u64()
        ),
        (Some("an3"), Some(3))
    );

    let per_day = results["txn_types_per_day"].as_array().unwrap();
    let purchases: u64 = per_day
        .iter()
        .filter(|r| r["txn_type"] == "01")
        .map(|r| r["notifications"].as_u64().unwrap())
        .sum();
    assert_eq!(purchases, 7, "{per_day:?}");
}
