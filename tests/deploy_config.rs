//! The configuration baked into the image (`infra/docker/paynotify.toml`)
//! with the environment the stack's task definitions set
//! (`infra/paynotify.yaml`, checked by `infra/tests/test_template.py`) is a
//! complete AWS configuration; without the environment it refuses to start.

use paynotify_shared::config::{BackendKind, Config};
use paynotify_shared::secret::SecretRef;

const BAKED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/docker/paynotify.toml");
const KEY: &str = "arn:aws:kms:eu-west-1:123456789012:key/0b3f6c1e-1111-2222-3333-444455556666";
const SECRET: &str =
    "arn:aws:secretsmanager:eu-west-1:123456789012:secret:paynotify-unionpay-AbCdEf";

#[test]
fn the_image_config_with_the_stack_environment_is_complete() {
    // Without the environment: no merchant, so no notification could ever
    // be accepted; the process must not start.
    let err = Config::load(BAKED.as_ref()).unwrap_err().to_string();
    assert!(err.contains("merchants"), "{err}");

    let env = [
        ("PAYNOTIFY__BACKEND__AWS__REGION", "eu-west-1".to_owned()),
        (
            "PAYNOTIFY__BACKEND__AWS__BUCKET",
            "paynotify-archive-123456789012-eu-west-1".to_owned(),
        ),
        ("PAYNOTIFY__BACKEND__AWS__QUEUE", "paynotify".to_owned()),
        (
            "PAYNOTIFY__BACKEND__AWS__DEAD_LETTER_QUEUE",
            "paynotify-dlq".to_owned(),
        ),
        (
            "PAYNOTIFY__BACKEND__AWS__WEBHOOKS_QUEUE",
            "paynotify-webhooks.fifo".to_owned(),
        ),
        (
            "PAYNOTIFY__BACKEND__AWS__TABLE",
            "paynotify-ledger".to_owned(),
        ),
        (
            "PAYNOTIFY__BACKEND__VISIBILITY_TIMEOUT_SECS",
            "30".to_owned(),
        ),
        ("PAYNOTIFY__BACKEND__MAX_RECEIVES", "8".to_owned()),
        ("PAYNOTIFY__BACKEND__AWS__KMS_KEY_ID", KEY.to_owned()),
        (
            "PAYNOTIFY__SOURCES__UNIONPAY__MERCHANTS",
            "[\"777290058167151\",\"898111148990001\"]".to_owned(),
        ),
        (
            "PAYNOTIFY__SOURCES__UNIONPAY__UNIONPAY__ROOT_CERT",
            format!("secretsmanager:{SECRET}#root"),
        ),
        (
            "PAYNOTIFY__SOURCES__UNIONPAY__UNIONPAY__MIDDLE_CERT",
            format!("secretsmanager:{SECRET}#middle"),
        ),
    ];
    for (k, v) in &env {
        std::env::set_var(k, v);
    }
    let config = Config::load(BAKED.as_ref()).unwrap();
    for (k, _) in &env {
        std::env::remove_var(k);
    }
    let aws = &config.backend.aws;
    assert_eq!(config.backend.kind, BackendKind::Aws);
    assert_eq!(
        (aws.region.as_str(), aws.bucket.as_str(), aws.queue.as_str()),
        (
            "eu-west-1",
            "paynotify-archive-123456789012-eu-west-1",
            "paynotify"
        )
    );
    assert_eq!(
        (aws.dead_letter_queue.as_str(), aws.table.as_str()),
        ("paynotify-dlq", "paynotify-ledger")
    );
    assert_eq!(aws.webhooks_queue, "paynotify-webhooks.fifo");
    assert_eq!(aws.endpoint_url, None);
    assert_eq!(aws.kms_key_id.as_deref(), Some(KEY));
    assert_eq!(aws.sse, paynotify_shared::config::Sse::Kms);
    assert_eq!(
        (
            config.backend.visibility_timeout_secs,
            config.backend.max_receives
        ),
        (30, 8)
    );
    assert_eq!(config.ingest.listen, "0.0.0.0:8080");
    assert_eq!(config.ingest.admin_listen, "0.0.0.0:9090");
    assert_eq!(config.worker.admin_listen, "0.0.0.0:9091");
    // The console's task sets these besides (infra/paynotify.yaml,
    // ConsoleTask; test_template.py reads the names after this line).
    // CONSOLE ENVIRONMENT
    let arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/paynotify/50dc6c495c0c9188";
    let form =
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:paynotify/console/form-secret-AbCdEf";
    let api_key =
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:paynotify/api/orders-service-AbCdEf";
    let console = [
        ("PAYNOTIFY__API__LISTEN", "0.0.0.0:8082".to_owned()),
        ("PAYNOTIFY__API__OIDC__LOAD_BALANCER_ARN", arn.to_owned()),
        (
            "PAYNOTIFY__API__OIDC__ISSUER",
            "https://accounts.example.com".to_owned(),
        ),
        (
            "PAYNOTIFY__API__OIDC__OPERATORS",
            "[\"ops@example.com\",\"lead@example.com\"]".to_owned(),
        ),
        ("PAYNOTIFY__API__OIDC__READERS", "[]".to_owned()),
        (
            "PAYNOTIFY__API__KEYS",
            format!(
                "[{{name=\"orders-service\",scope=\"read\",secret=\"secretsmanager:{api_key}\"}}]"
            ),
        ),
        (
            "PAYNOTIFY__API__OIDC__FORM_SECRET",
            format!("secretsmanager:{form}"),
        ),
    ];
    for (k, v) in env.iter().chain(&console) {
        std::env::set_var(k, v);
    }
    let with_console = Config::load(BAKED.as_ref());
    for (k, _) in env.iter().chain(&console) {
        std::env::remove_var(k);
    }
    // The stack's default when it is given no keys.
    for (k, v) in env.iter().chain(&console) {
        std::env::set_var(k, v);
    }
    std::env::set_var("PAYNOTIFY__API__KEYS", "[]");
    let without_keys = Config::load(BAKED.as_ref());
    for (k, _) in env.iter().chain(&console) {
        std::env::remove_var(k);
    }
    assert!(without_keys.unwrap().api.keys.is_empty());
    let api = with_console.unwrap().api;
    assert_eq!(api.listen, Some("0.0.0.0:8082".parse().unwrap()));
    assert_eq!(api.admin_listen, "0.0.0.0:9092".parse().unwrap());
    let [key] = api.keys.as_slice() else {
        panic!("{:?}", api.keys)
    };
    assert_eq!(
        (key.name.as_str(), key.scope),
        ("orders-service", paynotify_shared::config::ApiScope::Read)
    );
    match &key.secret {
        SecretRef::SecretsManager { arn, .. } => assert_eq!(arn, api_key),
        SecretRef::File(path) => panic!("a file reference: {}", path.display()),
    }
    let oidc = api.oidc.expect("api.oidc from the environment");
    assert_eq!(
        (oidc.load_balancer_arn.as_str(), oidc.issuer.as_str()),
        (arn, "https://accounts.example.com")
    );
    assert_eq!(oidc.operators, ["ops@example.com", "lead@example.com"]);
    assert!(oidc.readers.is_empty());
    assert_eq!(
        oidc.keys_url().unwrap(),
        "https://public-keys.auth.elb.eu-west-1.amazonaws.com/"
    );
    match &oidc.form_secret {
        SecretRef::SecretsManager { arn, json_key } => {
            assert_eq!((arn.as_str(), json_key.as_deref()), (form, None));
        }
        SecretRef::File(path) => panic!("a file reference: {}", path.display()),
    }

    let source = config.source("unionpay").unwrap();
    assert_eq!(source.merchants, ["777290058167151", "898111148990001"]);
    let up = source.unionpay.as_ref().unwrap();
    for (r, key) in [(&up.root_cert, "root"), (&up.middle_cert, "middle")] {
        match r {
            SecretRef::SecretsManager { arn, json_key } => {
                assert_eq!((arn.as_str(), json_key.as_deref()), (SECRET, Some(key)));
            }
            SecretRef::File(path) => panic!("a file reference: {}", path.display()),
        }
    }
}
