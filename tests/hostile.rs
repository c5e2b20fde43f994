//! Hostile input through the whole pipeline: what an attacker or a broken
//! PSP can send ends as a 4xx from ingest or a dead letter with a reason,
//! never a panic, never a silent drop, never a change to the ledger.

use std::time::{Duration, Instant};

use paynotify::app::AppOptions;
use paynotify_shared::envelope::Envelope;
use paynotify_shared::ports::{QueueMessage, Receipt};
use paynotify_shared::scheme::unionpay::BodyFormat;
use paynotify_worker::{process_one, Disposition, Hooks, Stats, WorkerContext};
use rand::{Rng, SeedableRng};
use support::app::{spawn_app_tweaked, TestApp};
use support::Kind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[macro_use]
mod support;

async fn app() -> TestApp {
    spawn_app_tweaked(Kind::Local, AppOptions::all(), |c| {
        // A second source that reads UnionPay's raw (brace-aware) format.
        let mut raw = c.sources["unionpay"].clone();
        if let Some(u) = raw.unionpay.as_mut() {
            u.body_format = BodyFormat::Raw;
        }
        c.sources.insert("raw".into(), raw);
    })
    .await
}

/// Waits until `n` notifications are dead-lettered, then checks that none
/// of them for a panic and that the ledger has no payment at all.
async fn all_dead_lettered(t: &TestApp, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dlq = t
            .app()
            .backends
            .dead_letters
            .dlq_list(100_000)
            .await
            .unwrap();
        if dlq.len() >= n {
            assert_eq!(dlq.len(), n);
            assert!(
                dlq.iter()
                    .all(|d| d.reason != "panic" && !d.reason.is_empty()),
                "{dlq:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} dead-lettered",
            dlq.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.wait_until_drained().await;
    let report = t.reconcile().await;
    assert_eq!(
        report.in_ledger, 0,
        "a hostile notification reached the ledger"
    );
    assert_eq!(report.dead_lettered, n as u64);
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_truncation_and_foreign_bytes_are_dead_lettered_with_reasons() {
    let t = app().await;
    let genuine = t.sim.purchase("h1", 100).into_bytes();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut bodies = Vec::new();
    // Whitespace injected at random offsets.
    for _ in 0..30 {
        let mut b = genuine.clone();
        let ws = [b' ', b'\t', b'\n', b'\r', b'+'][rng.random_range(0..5)];
        b.insert(rng.random_range(0..=b.len()), ws);
        bodies.push(("unionpay", b));
    }
    // Truncated every 97 bytes (every offset is covered by the worker-level test).
    for cut in (1..genuine.len()).step_by(97) {
        bodies.push(("unionpay", genuine[..cut].to_vec()));
    }
    // Not UTF-8; XML with entity expansion; deeply nested braces to the raw parser.
    bodies.push((
        "unionpay",
        (0..4096).map(|i| (0x80 + i % 0x7f) as u8).collect(),
    ));
    let laughs = "<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"ha\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;\">\
                  <!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;\">]><l>&c;&c;&c;&c;&c;&c;</l>";
    bodies.push(("unionpay", laughs.as_bytes().to_vec()));
    let mut nested = b"merId=777290058167151&x=".to_vec();
    nested.extend(std::iter::repeat_n(b'{', 500_000));
    bodies.push(("raw", nested.clone()));
    nested.extend(std::iter::repeat_n(b'}', 500_000));
    bodies.push(("raw", nested));
    bodies.push(("unionpay", Vec::new()));
    let n = bodies.len();
    for (source, body) in bodies {
        assert_eq!(
            t.post_to(source, body).await,
            200,
            "ingest archives everything"
        );
    }
    all_dead_lettered(&t, n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_at_every_offset_is_a_dead_letter_in_the_worker() {
    let t = app().await;
    let config = &t.config;
    let ctx = WorkerContext::start(
        config,
        &t.app().backends,
        std::sync::Arc::new(Stats::default()),
        t.app().metrics.clone(),
        Hooks::default(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let genuine = t.sim.purchase("h2", 100).into_bytes();
    let message = |e: &Envelope| QueueMessage {
        id: e.id.clone(),
        receipt: Receipt("r".into()),
        body: e.to_json(),
        receive_count: 1,
        first_received_at: None,
    };
    for cut in 0..genuine.len() {
        let d = process_one(&ctx, &message(&support::envelope(&genuine[..cut]))).await;
        assert!(
            matches!(&d, Disposition::DeadLetter { reason, .. } if !reason.as_str().is_empty()),
            "cut at {cut}: {d:?}"
        );
    }
    let whole = process_one(&ctx, &message(&support::envelope(&genuine))).await;
    assert!(matches!(whole, Disposition::Ack(_)), "{whole:?}");
    // An altered envelope (body and digest disagree) is a dead letter too.
    let mut e = support::envelope(&genuine);
    e.body = Some("merId=1".into());
    assert!(matches!(
        process_one(&ctx, &message(&e)).await,
        Disposition::DeadLetter { reason, .. } if reason == "malformed_envelope"
    ));
    for junk in [&b"not json"[..], b"{}", b"{\"v\":2}", &[0xff, 0xfe]] {
        let m = QueueMessage {
            id: "j".into(),
            receipt: Receipt("r".into()),
            body: junk.to_vec(),
            receive_count: 1,
            first_received_at: None,
        };
        assert!(matches!(
            process_one(&ctx, &m).await,
            Disposition::DeadLetter { reason, .. } if reason == "malformed_envelope"
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_header_floods_get_4xx_and_ingest_stays_up() {
    let t = app().await;
    let addr = t.app().addr.unwrap();
    // 10 MiB with a length (chunked bodies over the limit: e2e.rs).
    let status = t.post(vec![b'a'; 10 << 20]).await;
    assert!(status == 413 || status == 0, "{status}");
    // Ten thousand headers, and one header of a megabyte.
    for flood in [
        (0..10_000)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>(),
        format!("X-Big: {}\r\n", "b".repeat(1 << 20)),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /notify/unionpay HTTP/1.1\r\nHost: x\r\n{flood}Content-Length: 3\r\n\r\na=1"
        );
        let _ = s.write_all(head.as_bytes()).await;
        let mut buf = vec![0; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .map(|r| r.unwrap_or(0))
            .unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );
    }
    assert_eq!(t.app().backends.queue.depth().await.unwrap(), 0);
    assert_eq!(t.post(t.sim.purchase("h3", 1)).await, 200);
}

/// A holder of a signed notification moves `&currencyCode=…` into the value
/// of the field just before it (percent-encoded) and drops the field: the
/// signed string, values joined with `&` as received, is the same, so the
/// signature still verifies and the currency would fall back to CNY. A
/// decoded `&` outside a `{…}`/`[…]` group, or a `&`/`=` in a name, is
/// refused (every real vector in ../shared/vectors/unionpay still
/// verifies: tests of the scheme).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_moved_into_its_neighbours_value_is_refused() {
    let t = app().await;
    let genuine = t.sim.purchase("mv1", 100);
    let mut segments: Vec<(String, String)> = genuine
        .split('&')
        .map(|s| {
            let (k, v) = s.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    segments.sort();
    let at = segments
        .iter()
        .position(|(k, _)| k == "currencyCode")
        .unwrap();
    let (_, currency) = segments.remove(at);
    segments[at - 1].1 += &format!("%26currencyCode%3D{currency}");
    let forged: Vec<String> = segments.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(t.post(forged.join("&")).await, 200);
    // A name that carries the boundary instead.
    let (k, v) = segments[at - 1].clone();
    let (value, moved) = v.split_once("%26").unwrap();
    segments[at - 1] = (
        format!("{k}%3D{value}%26{}", moved.split("%3D").next().unwrap()),
        currency,
    );
    let forged: Vec<String> = segments.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(t.post(forged.join("&")).await, 200);
    all_dead_lettered(&t, 2).await;
    let reasons = t.dlq_reasons().await;
    assert_eq!(reasons, ["malformed_body", "malformed_body"], "{reasons:?}");
}
