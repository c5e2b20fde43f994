//! The `paynotify` binary as an operator runs it: one command, or `serve`
//! in the background with its ingest address read from its JSON log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use paynotify_shared::config::UNIONPAY_IDENTITY;
use paynotify_shared::testpki::{generate, TestPki, TestPkiOptions};
use serde_json::Value;

/// A test PKI and a `serve` configuration trusting it in `dir` (data in
/// `dir/data`, listeners on port 0); returns the configuration's path.
pub fn serve_config(dir: &Path) -> (std::path::PathBuf, TestPki) {
    let pki = generate(&TestPkiOptions::default()).unwrap();
    pki.write(dir, UNIONPAY_IDENTITY, &[MERCHANT.into()])
        .unwrap();
    let config = dir.join("paynotify.toml");
    std::fs::write(
        &config,
        format!(
            "[backend]\ndata_dir = \"data\"\n[ingest]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [worker]\nretry_min_delay_ms = 100\n{}",
            pki.config_snippet(UNIONPAY_IDENTITY, &[MERCHANT.into()])
        ),
    )
    .unwrap();
    (config, pki)
}

pub const MERCHANT: &str = "777290058167151";

pub fn paynotify(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paynotify"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("paynotify runs")
}

/// Starts `serve` and returns it with the ingest address from its log.
pub fn serve(config: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "serving" {
                    let _ = tx.send(v["ingest"].as_str().unwrap_or_default().to_owned());
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("serve logs its address");
    (child, addr)
}

pub fn wait_for(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "condition never held");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every string under a key that names a time (`*_at`, `*_time`, `from`,
/// `to`) parses as RFC 3339.
pub fn assert_rfc3339_times(v: &Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let is_time =
                    k.ends_with("_at") || k.ends_with("_time") || k == "from" || k == "to";
                if let (true, Value::String(s)) = (is_time, v) {
                    assert!(
                        time::OffsetDateTime::parse(
                            s,
                            &time::format_description::well_known::Rfc3339
                        )
                        .is_ok(),
                        "{k}: {s:?} is not RFC 3339"
                    );
                }
                assert_rfc3339_times(v);
            }
        }
        Value::Array(items) => items.iter().for_each(assert_rfc3339_times),
        _ => {}
    }
}
