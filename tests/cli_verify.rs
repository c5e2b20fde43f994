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
            "certificate_expired".into(),
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
    assert_eq!(v["error"], "bad_signature");
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
    assert_eq!(verdict(&out)["error"], "untrusted_certificate");
}

/// A Standard Webhooks source reading the simulator's events, its secret
/// in a file beside the configuration.
fn standard_webhooks_config(dir: &Path, secret: &str) -> String {
    std::fs::write(dir.join("acme.whsec"), secret).unwrap();
    let path = dir.join("paynotify.toml");
    std::fs::write(
        &path,
        format!(
            "[sources.acme]\nscheme = \"standard_webhooks\"\nmerchants = [\"m1\"]\n{}",
            paynotify::simulate::standard_webhooks_toml("acme", "file:acme.whsec")
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn webhook_headers_are_given_with_header() {
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(vectors().join("standard-webhooks/vectors.json")).unwrap(),
    )
    .unwrap();
    let v = &vectors[0];
    let dir = tempfile::tempdir().unwrap();
    let config = standard_webhooks_config(dir.path(), v["secret"].as_str().unwrap());
    let at = time::OffsetDateTime::from_unix_timestamp(v["timestamp"].as_i64().unwrap())
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let headers: Vec<String> = v["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, h)| format!("{k}: {}", h.as_str().unwrap()))
        .collect();
    let mut args = vec![
        "verify",
        "--config",
        &config,
        "--source",
        "acme",
        "--at",
        &at,
        "--explain",
    ];
    for h in &headers {
        args.extend(["--header", h]);
    }
    // The reference vector's signature verifies; its body is not one of
    // this source's events, so the mapping step is what fails.
    let out = paynotify(&args, v["payload"].as_str().unwrap().as_bytes());
    let first = verdict(&out);
    assert_eq!(out.status.code(), Some(1), "{first}");
    assert_eq!(first["error"], "missing_field");
    assert_eq!(first["step"], "mapping");
    assert_eq!(
        first["explain"]["authenticated"]["Ok"], v["msg_id"],
        "{first}"
    );
    // One byte changed: the signature step fails.
    let out = paynotify(
        &args,
        v["payload"].as_str().unwrap().replace('2', "3").as_bytes(),
    );
    assert_eq!(verdict(&out)["error"], "bad_signature");
    // No headers at all.
    let out = paynotify(&args[..8], v["payload"].as_str().unwrap().as_bytes());
    assert_eq!(verdict(&out)["error"], "missing_header");

    // An event of the source, signed now, verifies with its payment.
    let body = r#"{"type":"refund.succeeded","data":{"id":"r1","payment":"p1","amount":250,"currency":"usd","merchant":"m1"}}"#;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let key = paynotify_shared::scheme::webhook::HmacKey::new(
        &base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            v["secret"].as_str().unwrap().trim_start_matches("whsec_"),
        )
        .unwrap(),
    );
    let tag = key.sign(&[format!("msg_x.{now}.").as_bytes(), body.as_bytes()]);
    let signature = format!(
        "webhook-signature: v1,{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, tag)
    );
    let (id, ts) = (
        "webhook-id: msg_x".to_owned(),
        format!("webhook-timestamp: {now}"),
    );
    let args = [
        "verify", "--config", &config, "--source", "acme", "--header", &id, "--header", &ts,
        "--header", &signature,
    ];
    let out = paynotify(&args, body.as_bytes());
    let valid = verdict(&out);
    assert_eq!(out.status.code(), Some(0), "{valid}");
    assert_eq!(valid["payment_ref"], "p1");
    assert_eq!(valid["event"]["kind"], "refund");
    assert_eq!(valid["event"]["amount"]["currency"], "USD");
}
