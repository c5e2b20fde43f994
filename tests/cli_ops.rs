//! The operator's tools beside a running `paynotify serve`: `dlq show` names
//! the failing step of a forged notification and explains it, `dlq redrive
//! --dry-run` and `dlq purge` without `--yes` change nothing, `dlq purge`
//! deletes only what it is told to, `txn history` tells a payment's story in
//! decimal amounts, and every `--json` time is RFC 3339.

use std::process::Command;

use paynotify::simulate::{tamper, Delivery, Simulator};
use paynotify_shared::testpki::{generate, TestPkiOptions};
use serde_json::Value;
use support::cli::{assert_rfc3339_times, paynotify, serve, serve_config, wait_for, MERCHANT};

mod support;

fn json(args: &[&str]) -> (Option<i32>, Value) {
    let out = paynotify(args, &[]);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }),
    )
}

fn text(args: &[&str]) -> (Option<i32>, String) {
    let out = paynotify(args, &[]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn dlq_and_ledger_tools() {
    let dir = tempfile::tempdir().unwrap();
    let (config, pki) = serve_config(dir.path());
    let cfg = config.to_str().unwrap();
    let (mut child, addr) = serve(&config);
    let url = format!("http://{addr}/notify/unionpay");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = Simulator::new(pki.leaf_key_pem.as_bytes(), &pki.leaf_pem, MERCHANT, &url).unwrap();
    let forged_pki = generate(&TestPkiOptions::default()).unwrap();
    let forger = Simulator::new(
        forged_pki.leaf_key_pem.as_bytes(),
        &forged_pki.leaf_pem,
        MERCHANT,
        &url,
    )
    .unwrap();
    for body in [
        sim.purchase("o1", 4200),
        sim.refund("o1", "o1r", 1000),
        sim.refund("late", "later", 500),
        tamper(&sim.purchase("o2", 100)),
        forger.purchase_with("o3", 100, &[("accNo", "6216261000000000018")]),
    ] {
        assert_eq!(rt.block_on(sim.send(body)), Delivery::Accepted(1));
    }
    let dlq = |cfg: &str| json(&["dlq", "list", "--config", cfg, "--json"]).1;
    wait_for(|| dlq(cfg).as_array().map_or(0, Vec::len) == 2);
    wait_for(|| {
        json(&[
            "txn", "get", "--config", cfg, "unionpay", MERCHANT, "o1", "--json",
        ])
        .1["state"]["status"]
            == "PARTIALLY_REFUNDED"
    });
    let listed = dlq(cfg);
    assert_rfc3339_times(&listed);
    let forged = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reason"] == "untrusted_certificate")
        .unwrap();

    // dlq show: the reason, the request, the failing step, every step.
    let id = forged["id"].as_str().unwrap();
    let (code, shown) = json(&["dlq", "show", "--config", cfg, id, "--json"]);
    assert_eq!(code, Some(0));
    assert_rfc3339_times(&shown);
    assert_eq!(shown["reason"], "untrusted_certificate");
    assert_eq!(shown["envelope"]["source"], "unionpay");
    assert_eq!(shown["envelope"]["method"], "POST");
    assert_eq!(shown["verification"]["valid"], false);
    assert_eq!(shown["verification"]["error"], "untrusted_certificate");
    assert_eq!(shown["verification"]["step"], "certificate");
    assert_eq!(
        shown["verification"]["explain"]["chain"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "the signing certificate, then the configured middle and root"
    );
    assert!(
        shown["archive_key"]
            .as_str()
            .unwrap()
            .starts_with("raw/source=unionpay/"),
        "{shown}"
    );
    // Shown by notification id too, as text; the card number is masked.
    let notification = shown["notification_id"].as_str().unwrap();
    let (code, shown_text) = text(&["dlq", "show", "--config", cfg, notification]);
    assert_eq!(code, Some(0));
    assert!(
        shown_text.contains("verifies now  no: untrusted_certificate at step certificate"),
        "{shown_text}"
    );
    assert!(!shown_text.contains("6216261000000000018"), "{shown_text}");
    assert!(shown_text.contains("621626*********0018"), "{shown_text}");
    assert_eq!(
        text(&["dlq", "show", "--config", cfg, "01NOSUCHTHING"]).0,
        Some(1)
    );

    // Dry runs change nothing.
    let (code, dry) = json(&["dlq", "redrive", "--config", cfg, "--dry-run"]);
    assert_eq!(code, Some(0));
    assert_eq!(dry["would_redrive"], 2);
    assert_eq!(dry["by_reason"]["bad_signature"], 1);
    assert_eq!(dry["by_reason"]["untrusted_certificate"], 1);
    let (code, refused) = json(&["dlq", "purge", "--config", cfg, "--reason", "bad_signature"]);
    assert_eq!(code, Some(1));
    assert_eq!(refused["would_purge"], 1);
    assert_eq!(dlq(cfg).as_array().unwrap().len(), 2);
    // Neither a reason nor --all: a usage error.
    assert_eq!(text(&["dlq", "purge", "--config", cfg, "--yes"]).0, Some(2));
    let (code, purged) = json(&[
        "dlq",
        "purge",
        "--config",
        cfg,
        "--reason",
        "bad_signature",
        "--yes",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(
        (purged["purged"].clone(), purged["still_in_dlq"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(dlq(cfg)[0]["reason"], "untrusted_certificate");

    // A payment's story, in decimals.
    let args = [
        "txn", "history", "--config", cfg, "unionpay", MERCHANT, "o1",
    ];
    let (code, story) = text(&args);
    assert_eq!(code, Some(0));
    for expected in [
        "status PARTIALLY_REFUNDED  paid 42.00 CNY  refunded 10.00 CNY",
        "psp txn id",
        "42.00 CNY",
        "10.00 CNY",
        "o1r",
    ] {
        assert!(story.contains(expected), "{expected:?} in\n{story}");
    }
    let (_, story) = json(&[&args[..], &["--json"]].concat());
    assert_rfc3339_times(&story);
    let events = story["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0]["amount"].clone(), events[1]["amount"].clone()),
        ("42.00".into(), "10.00".into())
    );
    assert_eq!(events[1]["psp_txn_id"], "o1r");
    assert!(events[0]["psp_time"].is_string());
    let (_, got) = json(&[
        "txn", "get", "--config", cfg, "unionpay", MERCHANT, "o1", "--json",
    ]);
    assert_rfc3339_times(&got);
    assert_eq!(got["state"]["paid"], "42.00");
    assert_eq!(got["state"]["refunded"], "10.00");
    // The same payment by the merchant's order id (the simulator's
    // purchase of o1 is order oo1), as `txn get` shows it.
    assert_eq!(got["order_id"], "oo1");
    let (code, found) = json(&["txn", "find", "--config", cfg, "oo1", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(found["payments"], serde_json::json!([got]));
    let (code, listed) = text(&["txn", "find", "--config", cfg, "oo1"]);
    assert_eq!(code, Some(0));
    for expected in ["order oo1", "status PARTIALLY_REFUNDED  paid 42.00 CNY"] {
        assert!(listed.contains(expected), "{expected:?} in\n{listed}");
    }
    let (code, none) = text(&["txn", "find", "--config", cfg, "no-such-order"]);
    assert_eq!(code, Some(1), "{none}");
    assert!(none.contains("no payment names order"), "{none}");
    // The early refund waits, parked; its time is RFC 3339 too.
    let (code, story) = json(&[
        "txn", "history", "--config", cfg, "unionpay", MERCHANT, "late", "--json",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(story["parked"][0]["amount"], "5.00");
    assert_rfc3339_times(&story);
    let (_, parked) = json(&["parked", "list", "--config", cfg, "--json"]);
    assert_rfc3339_times(&parked);
    assert_eq!(
        text(&["txn", "history", "--config", cfg, "unionpay", MERCHANT, "nope"]).0,
        Some(1)
    );

    // Piped, reconcile draws no progress bar.
    let out = paynotify(&["reconcile", "--config", cfg, "--json"], &[]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_rfc3339_times(&report);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["dead_lettered"], 1, "{report}");
    assert_eq!(report["purged"], 1, "the purge was recorded: {report}");
    assert_eq!(out.status.code(), Some(0), "{report}");

    // One dead letter by its notification id.
    let one = ["dlq", "redrive", "--config", cfg, "--id", notification];
    let (code, dry) = json(&[&one[..], &["--dry-run"]].concat());
    assert_eq!(code, Some(0));
    assert_eq!(dry["by_reason"]["untrusted_certificate"], 1, "{dry}");
    let none = ["dlq", "redrive", "--config", cfg, "--id", "01NOSUCHTHING"];
    assert_eq!(text(&none).0, Some(1));
    assert_eq!(text(&[&one[..], &["--reason", "x"]].concat()).0, Some(2));
    let (code, moved) = json(&one);
    assert_eq!(code, Some(0));
    assert_eq!(moved["redriven"], 1, "{moved}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn the_demo_checks_its_own_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let out = paynotify(
        &[
            "demo",
            "--count",
            "60",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for expected in [
        "the ledger matches what was sent",
        "paid total",
        "refunded total",
        "reconcile                clean",
        "0 order violations, 0 bad signatures; its view equals the ledger's transitions",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
    assert!(!stdout.contains("<- differs"), "{stdout}");

    // The demo's deliveries, through the operator's commands.
    let config = data.join("paynotify.toml");
    let config = config.to_str().unwrap();
    let out = paynotify(&["deliveries", "list", "--config", config, "--json"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|d| d["status"] == "delivered"),
        "{listed:?}"
    );
    let id = listed[0]["event_id"].as_str().unwrap();
    let out = paynotify(&["deliveries", "show", "--config", config, id], &[]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["event"]["id"], id);
    assert_eq!(shown["event"]["schema"], "paynotify.payment.v1");
    let out = paynotify(
        &[
            "deliveries",
            "resend",
            "--config",
            config,
            "--endpoint",
            "merchant",
            id,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    let out = paynotify(
        &[
            "deliveries",
            "list",
            "--config",
            config,
            "--status",
            "pending",
            "--json",
        ],
        &[],
    );
    let pending: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pending[0]["event_id"], id, "resent: pending again");
    let out = paynotify(
        &[
            "deliveries",
            "resend",
            "--config",
            config,
            "--endpoint",
            "merchant",
            "evt_none",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let out = paynotify(
        &[
            "deliveries",
            "resend",
            "--config",
            config,
            "--endpoint",
            "nobody",
            id,
        ],
        &[],
    );
    assert_ne!(out.status.code(), Some(0));
    let out = paynotify(&["deliveries", "endpoints", "--config", config], &[]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["endpoint"], "merchant");
    assert_eq!(status["pending"], 1);
}

/// Without `--config`, the tools read the file `PAYNOTIFY_CONFIG` names,
/// else `./paynotify.toml`; with neither, they say where they looked.
#[test]
fn the_configuration_is_found_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = serve_config(dir.path());
    std::fs::rename(&config, dir.path().join("paynotify.toml")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |cwd: &std::path::Path, env: Option<&std::path::Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paynotify"));
        cmd.args(["dlq", "list", "--json"])
            .current_dir(cwd)
            .env_remove("PAYNOTIFY_CONFIG");
        if let Some(path) = env {
            cmd.env("PAYNOTIFY_CONFIG", path);
        }
        cmd.output().expect("paynotify runs")
    };
    let listed = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    // ./paynotify.toml in the working directory.
    assert_eq!(listed(&run(dir.path(), None)), serde_json::json!([]));
    // PAYNOTIFY_CONFIG from anywhere, before ./paynotify.toml.
    let named = dir.path().join("paynotify.toml");
    assert_eq!(
        listed(&run(elsewhere.path(), Some(&named))),
        serde_json::json!([])
    );
    // Neither: an error naming both, not a default configuration.
    let out = run(elsewhere.path(), None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PAYNOTIFY_CONFIG") && err.contains("paynotify.toml"),
        "{err}"
    );
    assert!(!elsewhere.path().join("data").exists());
}
