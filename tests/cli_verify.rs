//! `paynotify verify` and `paynotify testpki` as a merchant runs them.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use paynotify_shared::testing::json_vector_form;
use serde_json::Value;

const CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/unionpay-cfca-test.toml"
);

fn vectors() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors")
}

fn paynotify(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("paynotify runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn verdict(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn sync_body() -> Vec<u8> {
    std::fs::read(
        vectors().join("unionpay/yansongda-pay/sync_response_txnType01_pay20240105145046.txt"),
    )
    .unwrap()
}

#[test]
fn valid_message_exits_0_with_its_event() {
    let args = [
        "verify",
        "--config",
        CONFIG,
        "--source",
        "unionpay-sync",
        "--at",
        "2024-06-01T00:00:00+08:00",
    ];
    let out = paynotify(&args, &sync_body());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = verdict(&out);
    assert_eq!(v["valid"], true);
    assert_eq!(v["payment_ref"], "442401051450467846498");
    assert_eq!(v["event"]["kind"], "payment");
    assert_eq!(v["event"]["amount"]["currency"], "CNY");
}

#[test]
fn expired_and_tampered_messages_exit_1_naming_the_step() {
    let out = paynotify(
        &["verify", "--config", CONFIG, "--source", "unionpay-sync"],
        &sync_body(),
    );
    assert_eq!(out.status.code(), Some(1));
    let v = verdict(&out);
    assert_eq!(
        (v["valid"].clone(), v["error"].clone(), v["step"].clone()),
        (
            false.into(),
            "CertificateExpired".into(),
            "certificate".into()
        )
    );

    let tampered = String::from_utf8(sync_body())
        .unwrap()
        .replace("txnAmt=1&", "txnAmt=100&");
    let args = [
        "verify",
        "--config",
        CONFIG,
        "--source",
        "unionpay-sync",
        "--at",
        "2024-06-01T00:00:00+08:00",
        "--explain",
    ];
    let out = paynotify(&args, tampered.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let v = verdict(&out);
    assert_eq!(v["error"], "BadSignature");
    assert_eq!(v["step"], "signature");
    let explain = &v["explain"];
    assert!(explain["canonical_string"]
        .as_str()
        .unwrap()
        .contains("txnAmt=100&"));
    assert_eq!(explain["digest"].as_str().unwrap().len(), 64);
    let chain = explain["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 3);
    assert!(chain[2]["subject"]
        .as_str()
        .unwrap()
        .contains("CFCA TEST CS CA"));
}

#[test]
fn usage_errors_exit_2() {
    let out = paynotify(&["verify", "--config", CONFIG, "--source", "nope"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown source"));
    let out = paynotify(
        &[
            "verify",
            "--config",
            "/nonexistent.toml",
            "--source",
            "unionpay",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    let out = paynotify(
        &[
            "verify",
            "--config",
            CONFIG,
            "--source",
            "unionpay",
            "--at",
            "yesterday",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn testpki_writes_a_config_that_verify_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = paynotify(&["testpki", "--dir", d], b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "root.pem",
        "middle.pem",
        "signer.pem",
        "signer.key.pem",
        "unionpay-source.toml",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    // The genuine CFCA-signed message is not trusted under the test root.
    let config = dir.path().join("unionpay-source.toml");
    let body = json_vector_form("unionpay/yansongda-pay/backnotify_purchase_20220908.json");
    let args = [
        "verify",
        "--config",
        config.to_str().unwrap(),
        "--source",
        "unionpay",
        "--at",
        "2024-06-01T00:00:00+08:00",
    ];
    let out = paynotify(&args, &body);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(verdict(&out)["error"], "UntrustedCertificate");
}
