//! Test support shared by the integration tests: backends of either kind
//! with unique resource names, on a temporary directory or the AWS emulator.

#![allow(dead_code)]

pub mod app;
pub mod cli;
pub mod deployed;
pub mod runtime_api;
pub mod stream;

use paynotify_shared::backend::{self, Backends};
use paynotify_shared::config::{BackendConfig, BackendKind, Sse};

/// Instantiates each named `async fn(Kind)` test once per backend, in
/// modules `local` and `aws`.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Local).await
                }
            )*
        }
        mod aws {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Aws).await
                }
            )*
        }
    };
}

/// An envelope of `body` received now on the UnionPay source, as ingest
/// builds it.
pub fn envelope(body: &[u8]) -> paynotify_shared::envelope::Envelope {
    received("unionpay", time::OffsetDateTime::now_utc(), vec![], body)
}

/// An envelope of `body` with `headers`, posted to `/notify/{source}` and
/// received at `received_at`, as ingest builds it.
pub fn received(
    source: &str,
    received_at: time::OffsetDateTime,
    headers: Vec<(String, String)>,
    body: &[u8],
) -> paynotify_shared::envelope::Envelope {
    paynotify_shared::envelope::Envelope::new(paynotify_shared::envelope::Received {
        source,
        received_at,
        remote_addr: None,
        method: "POST",
        path: &format!("/notify/{source}"),
        query: None,
        headers,
        body,
    })
}

/// A workspace binary beside the test's executable (`target/debug/`).
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join(name))
        .unwrap();
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Which backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Local,
    Aws,
}

/// The AWS emulator's endpoint. Fails loudly when it is not running: the
/// AWS tests never skip.
pub fn aws_endpoint() -> String {
    std::env::var("PAYNOTIFY_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "PAYNOTIFY_TEST_AWS_ENDPOINT is not set: the AWS backend tests need moto_server. \
             Run scripts/test.sh (it installs moto from scripts/requirements-moto.txt into a venv and \
             starts it), or start `moto_server -H 127.0.0.1 -p PORT` and set \
             PAYNOTIFY_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT"
        )
    })
}

/// Points `config` at fresh, uniquely named resources of `kind` under `dir`
/// (local) or on the emulator (AWS), creating them.
pub async fn prepare(kind: Kind, config: &mut BackendConfig, dir: &std::path::Path) {
    match kind {
        Kind::Local => {
            config.kind = BackendKind::Local;
            config.data_dir = dir.join("data");
            // Every local test runs on a sharded queue (more shards than
            // the test machine's cores, so sends, receives and deletes
            // cross shards).
            config.queue_shards = Some(3);
        }
        Kind::Aws => {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
            let id = ulid::Ulid::new().to_string().to_lowercase();
            config.kind = BackendKind::Aws;
            config.aws.endpoint_url = Some(aws_endpoint());
            config.aws.region = "us-east-1".into();
            config.aws.bucket = format!("pn-{id}");
            config.aws.queue = format!("pn-{id}");
            config.aws.dead_letter_queue = format!("pn-{id}-dlq");
            config.aws.webhooks_queue = format!("pn-{id}-webhooks.fifo");
            config.aws.table = format!("pn-{id}");
            config.aws.sse = Sse::Kms;
            config.aws.send_batch_window_ms = 2;
            // moto slows every write of a table with a stream: only the
            // tests that read it turn it on (tests/events_stream.rs).
            config.aws.ledger_stream = false;
            backend::aws::setup::init(config)
                .await
                .expect("creating emulator resources");
        }
    }
}

/// Fresh backends of `kind` with the given queue semantics.
pub async fn backends(
    kind: Kind,
    dir: &std::path::Path,
    visibility_timeout_secs: u32,
    max_receives: u32,
) -> Backends {
    backends_tweaked(kind, dir, visibility_timeout_secs, max_receives, |_| {}).await
}

/// As [`backends`], the configuration changed by `tweak` once prepared.
pub async fn backends_tweaked(
    kind: Kind,
    dir: &std::path::Path,
    visibility_timeout_secs: u32,
    max_receives: u32,
    tweak: impl FnOnce(&mut BackendConfig),
) -> Backends {
    let mut config = BackendConfig {
        visibility_timeout_secs,
        max_receives,
        ..BackendConfig::default()
    };
    prepare(kind, &mut config, dir).await;
    tweak(&mut config);
    backend::build(&config).await.expect("opening backends")
}

/// The reasons of the dead letters in `queue`, sorted.
pub async fn dlq_reasons(dead: &dyn paynotify_shared::ports::DeadLetters) -> Vec<String> {
    let mut r: Vec<String> = dead
        .dlq_list(100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.reason)
        .collect();
    r.sort();
    r
}

/// Every notification archived under `raw/`, with where it is; a torn
/// segment fails the test.
pub async fn archived(
    archive: &dyn paynotify_shared::ports::Archive,
) -> Vec<(
    paynotify_shared::segment::Location,
    paynotify_shared::envelope::Envelope,
)> {
    let mut out = Vec::new();
    for key in archive.list("raw/", None, None).await.unwrap() {
        let records = paynotify_shared::segment::read_object(archive, &key)
            .await
            .unwrap()
            .unwrap();
        for (at, json) in records {
            out.push((
                at,
                paynotify_shared::envelope::Envelope::from_json(&json).unwrap(),
            ));
        }
    }
    out
}

/// A successful event of `kind` for payment `key` of merchant `m` at source
/// `u`, with event key `id`.
pub fn event(
    key: &str,
    id: &str,
    kind: paynotify_shared::EventKind,
    minor: u64,
) -> paynotify_shared::PaymentEvent {
    paynotify_shared::PaymentEvent {
        source: "u".into(),
        merchant: "m".into(),
        payment_ref: key.into(),
        payment_key: paynotify_shared::PaymentKey::new("u", "m", key),
        event_key: paynotify_shared::EventKey::new(id),
        kind,
        outcome: paynotify_shared::EventOutcome::Succeeded,
        amount: paynotify_shared::Money {
            minor,
            currency: paynotify_shared::Currency::from_alpha("CNY").unwrap(),
        },
        currency_defaulted: false,
        psp_txn_id: None,
        psp_time: None,
        result_code: None,
        result_message: None,
        settle_date: None,
        order_id: None,
        legacy_key: None,
    }
}

/// The test receiver's secret (`whsec_…`).
/// Sets `c`'s read API to listen on a free loopback port with `keys`
/// (name, scope, value), each in a file beside the data directory.
pub fn api_keys(
    c: &mut paynotify_shared::config::Config,
    keys: &[(&str, paynotify_shared::config::ApiScope, &str)],
) {
    use paynotify_shared::config::{ApiConfig, ApiKeyConfig, SecretRef};
    let dir = c.backend.data_dir.parent().unwrap().to_path_buf();
    c.api = ApiConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        keys: keys
            .iter()
            .map(|(name, scope, value)| {
                let path = dir.join(format!("{name}.key"));
                std::fs::write(&path, format!("{value}\n")).unwrap();
                ApiKeyConfig {
                    name: (*name).into(),
                    scope: *scope,
                    secret: SecretRef::File(path),
                }
            })
            .collect(),
        ..ApiConfig::default()
    };
}

pub fn receiver_secret() -> String {
    use base64::Engine as _;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"paynotify-delivery-test-secret!!")
    )
}

/// An endpoint `name` posting to `url`, its secret ([`receiver_secret`])
/// written to `secret_path`: loopback and plain HTTP allowed, a second to
/// answer.
pub fn loopback_endpoint(
    name: &str,
    url: String,
    secret_path: std::path::PathBuf,
) -> paynotify_shared::config::EndpointConfig {
    std::fs::write(&secret_path, receiver_secret()).unwrap();
    paynotify_shared::config::EndpointConfig {
        name: name.into(),
        url,
        secrets: vec![paynotify_shared::config::SecretRef::File(secret_path)],
        event_types: Default::default(),
        sources: Default::default(),
        merchants: Default::default(),
        timeout_ms: 1000,
        max_requests_per_sec: 1000,
        allow_insecure_http: true,
        allow_private_addresses: true,
    }
}

/// The value of the form field `name` in a console page's `html`.
pub fn form_field(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no field {name} in {html:.2000}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].replace("&amp;", "&")
}
