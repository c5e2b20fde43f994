//! `paynotify serve` as an operator runs it: real process, real HTTP, the
//! inspection commands beside it, environment overrides, replay, and a
//! graceful exit on SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use paynotify::simulate::{tamper, Delivery, Simulator};
use serde_json::Value;
use support::cli::{paynotify, serve, serve_config, wait_for, MERCHANT};

mod support;

fn txn(config: &str, query_id: &str, env: &[(&str, &str)]) -> (Option<i32>, Value) {
    let out = paynotify(
        &[
            "txn", "get", "--config", config, "unionpay", MERCHANT, query_id, "--json",
        ],
        env,
    );
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
    )
}

#[test]
fn serve_ledger_dlq_replay_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (config, pki) = serve_config(dir.path());
    let cfg = config.to_str().unwrap();
    let (mut child, addr) = serve(&config);
    let url = format!("http://{addr}/notify/unionpay");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = Simulator::new(pki.leaf_key_pem.as_bytes(), &pki.leaf_pem, MERCHANT, &url).unwrap();
    let purchase = sim.purchase("s1", 4200);
    assert!(matches!(
        rt.block_on(sim.send(purchase.clone())),
        Delivery::Accepted(1)
    ));
    assert!(matches!(
        rt.block_on(sim.send(tamper(&purchase))),
        Delivery::Accepted(1)
    ));

    wait_for(|| txn(cfg, "s1", &[]).1["state"]["status"] == "PAID");
    let (code, v) = txn(cfg, "s1", &[]);
    assert_eq!(code, Some(0));
    assert_eq!(v["state"]["paid_minor"], 4200);
    assert_eq!(v["history"].as_array().unwrap().len(), 1);

    wait_for(|| {
        let out = paynotify(&["dlq", "list", "--config", cfg, "--json"], &[]);
        serde_json::from_slice::<Value>(&out.stdout)
            .map(|v| v.as_array().map_or(0, Vec::len) == 1)
            .unwrap_or(false)
    });
    let dlq: Value =
        serde_json::from_slice(&paynotify(&["dlq", "list", "--config", cfg, "--json"], &[]).stdout)
            .unwrap();
    assert_eq!(dlq[0]["reason"], "bad_signature");
    // Times in --json are RFC 3339.
    let dead_at = dlq[0]["dead_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(dead_at, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{dead_at}"
    );
    let key = dlq[0]["archive_key"].as_str().unwrap().to_owned();
    let cat = paynotify(&["archive", "cat", "--config", cfg, &key], &[]);
    assert!(String::from_utf8_lossy(&cat.stdout).contains("\"source\":\"unionpay\""));

    // An environment override points at another (empty) data directory.
    let other = dir.path().join("other");
    let (code, _) = txn(
        cfg,
        "s1",
        &[("PAYNOTIFY__BACKEND__DATA_DIR", other.to_str().unwrap())],
    );
    assert_eq!(code, Some(1), "the override was applied");

    // Replaying the archive changes nothing: the purchase is a duplicate, the
    // tampered one is dead-lettered again.
    let ls = paynotify(&["archive", "ls", "--config", cfg], &[]);
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), 2);
    let out = paynotify(
        &[
            "replay",
            "--config",
            cfg,
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ],
        &[],
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["replayed"],
        2
    );
    wait_for(|| {
        let out = paynotify(&["dlq", "list", "--config", cfg, "--json"], &[]);
        serde_json::from_slice::<Value>(&out.stdout)
            .map(|v| v.as_array().map_or(0, Vec::len) == 2)
            .unwrap_or(false)
    });
    let (_, v) = txn(cfg, "s1", &[]);
    assert_eq!(
        (
            v["state"]["version"].clone(),
            v["history"].as_array().unwrap().len()
        ),
        (1.into(), 1)
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(0));
}
