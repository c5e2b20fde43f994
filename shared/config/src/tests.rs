use super::*;

const TOML: &str = r#"
    [sources.unionpay]
    scheme = "unionpay"
    merchants = ["777290058167151"]
    [sources.unionpay.unionpay]
    root_cert = "file:certs/root.pem"
    middle_cert = "file:/etc/middle.pem"
"#;

#[test]
fn loads_defaults_and_resolves_paths() {
    let c = Config::from_toml(TOML, Path::new("/cfg")).unwrap();
    let s = c.source("unionpay").unwrap();
    assert_eq!(s.success_body(), "ok");
    let up = s.unionpay.as_ref().unwrap();
    assert_eq!(up.identity, UNIONPAY_IDENTITY);
    assert_eq!(up.root_cert, SecretRef::File("/cfg/certs/root.pem".into()));
    assert_eq!(up.middle_cert, SecretRef::File("/etc/middle.pem".into()));
    assert!(matches!(
        c.source("nope"),
        Err(ConfigError::UnknownSource(_))
    ));
}

#[test]
fn rejects_inline_certs_unknown_schemes_and_keys() {
    let inline = TOML.replace("file:certs/root.pem", "-----BEGIN CERTIFICATE-----");
    assert!(Config::from_toml(&inline, Path::new("/"))
        .unwrap_err()
        .to_string()
        .contains("inline"));
    let scheme = TOML.replace("scheme = \"unionpay\"", "scheme = \"paypal\"");
    assert!(Config::from_toml(&scheme, Path::new("/")).is_err());
    let typo = TOML.replace("merchants", "merchant");
    assert!(Config::from_toml(&typo, Path::new("/")).is_err());
    let empty = TOML.replace("[\"777290058167151\"]", "[]");
    assert!(Config::from_toml(&empty, Path::new("/")).is_err());
}

#[test]
fn segment_settings_are_bounded() {
    let c = Config::from_toml(TOML, Path::new("/")).unwrap();
    assert_eq!(
        (c.ingest.segment_window_ms, c.ingest.segment_writers),
        (None, None),
        "unset: the backend's defaults apply"
    );
    for bad in [
        "segment_window_ms = 1001",
        "segment_writers = 0",
        "segment_max_records = 0",
    ] {
        let toml = format!("[ingest]\n{bad}\n{TOML}");
        let e = Config::from_toml(&toml, Path::new("/")).unwrap_err();
        assert!(matches!(e, ConfigError::Setting(_)), "{bad}: {e}");
    }
    let toml = format!("[ingest]\nsegment_window_ms = 1000\nsegment_writers = 2\n{TOML}");
    let c = Config::from_toml(&toml, Path::new("/")).unwrap();
    assert_eq!(
        (c.ingest.segment_window_ms, c.ingest.segment_writers),
        (Some(1000), Some(2))
    );
}

#[test]
fn queue_shards_are_bounded() {
    let c = Config::from_toml(TOML, Path::new("/")).unwrap();
    assert_eq!(
        c.backend.queue_shards, None,
        "unset: one per core, at most 8"
    );
    for bad in [0, 65] {
        let toml = format!("[backend]\nqueue_shards = {bad}\n{TOML}");
        let e = Config::from_toml(&toml, Path::new("/")).unwrap_err();
        assert!(matches!(e, ConfigError::Setting(_)), "{bad}: {e}");
    }
    let toml = format!("[backend]\nqueue_shards = 64\n{TOML}");
    let c = Config::from_toml(&toml, Path::new("/")).unwrap();
    assert_eq!(c.backend.queue_shards, Some(64));
}

const SW: &str = r#"
    [sources.acme]
    scheme = "standard_webhooks"
    merchants = ["m"]
    [sources.acme.standard_webhooks]
    secrets = ["file:acme.whsec", "secretsmanager:arn:aws:secretsmanager:eu-west-1:1:secret:s#new"]
    [sources.acme.standard_webhooks.fields]
    event_type = "/type"
    payment_ref = "/data/payment"
    amount = "/data/amount"
    currency = "/data/currency"
    [sources.acme.standard_webhooks.events]
    "payment.succeeded" = "payment"
    "refund.failed" = "refund_failed"
    "capture.waiting" = "capture_pending"
"#;

#[test]
fn standard_webhooks_sources_take_references_and_an_event_map() {
    use paynotify_model::event::{EventKind, EventOutcome};
    let c = Config::from_toml(SW, Path::new("/cfg")).unwrap();
    let sw = c
        .source("acme")
        .unwrap()
        .standard_webhooks
        .as_ref()
        .unwrap();
    assert_eq!(sw.secrets[0], SecretRef::File("/cfg/acme.whsec".into()));
    assert_eq!(sw.tolerance_secs, 300);
    assert_eq!(c.source("acme").unwrap().success_body(), "");
    assert_eq!(
        sw.events["refund.failed"],
        MappedEvent {
            kind: EventKind::Refund,
            outcome: EventOutcome::Failed
        }
    );
    assert_eq!(sw.events["capture.waiting"].outcome, EventOutcome::Pending);
    // An inline secret, an unknown kind, no keys at all, no table.
    for (from, to) in [
        ("file:acme.whsec", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("\"refund_failed\"", "\"chargeback\""),
    ] {
        assert!(
            Config::from_toml(&SW.replace(from, to), Path::new("/")).is_err(),
            "{to}"
        );
    }
    let no_keys = SW.replace(
        "secrets = [\"file:acme.whsec\", \"secretsmanager:arn:aws:secretsmanager:eu-west-1:1:secret:s#new\"]",
        "",
    );
    assert!(Config::from_toml(&no_keys, Path::new("/")).is_err());
    let no_table = "[sources.acme]\nscheme = \"standard_webhooks\"\nmerchants = [\"m\"]\n";
    assert!(Config::from_toml(no_table, Path::new("/")).is_err());
}

#[test]
fn the_read_api_needs_keys_of_its_own_names_and_an_address_of_its_own() {
    let key = |name: &str| {
        format!("[[api.keys]]\nname = \"{name}\"\nscope = \"read\"\nsecret = \"file:keys/{name}.key\"\n")
    };
    let with = |api: &str| format!("{TOML}\n{api}");
    let c = Config::from_toml(
        &with(&format!("[api]\nlisten = \"127.0.0.1:9092\"\n{}", key("a"))),
        Path::new("/cfg"),
    )
    .unwrap();
    assert_eq!(c.api.keys[0].scope, ApiScope::Read);
    assert_eq!(
        c.api.keys[0].secret,
        SecretRef::File("/cfg/keys/a.key".into())
    );
    for (api, says) in [
        (
            "[api]\nlisten = \"127.0.0.1:9092\"\n".to_owned(),
            "api.keys is empty",
        ),
        (
            format!(
                "[api]\nlisten = \"127.0.0.1:9092\"\n{}{}",
                key("a"),
                key("a")
            ),
            "a name of its own",
        ),
        (
            format!("[api]\nlisten = \"0.0.0.0:8080\"\n{}", key("a")),
            "another listener's address",
        ),
        (key("a").replace("\"read\"", "\"admin\""), "unknown variant"),
        (
            key("a").replace("file:keys/a.key", "s3cr3t-inline"),
            "inline",
        ),
    ] {
        let err = Config::from_toml(&with(&api), Path::new("/cfg"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{api}: {err}");
    }
}
