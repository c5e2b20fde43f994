//! A deployment on the emulator as the stacks make it: the AWS resources,
//! the UnionPay certificates in Secrets Manager under the data stack's
//! secret name, and the environment the stacks give every process (the
//! image's baked `infra/docker/paynotify.toml` completes it).
//!
//! With `PAYNOTIFY_TEST_CALL_LOGS=DIR` (scripts/test.sh sets it), a process
//! started with [`Deployed::env_as`] writes down every AWS call it makes
//! in `DIR/{role}--….jsonl`; `infra/tests/test_iam.py` checks each against
//! that role's policies in the stacks.

use paynotify_shared::config::Config;
use paynotify_shared::testpki::{generate, TestPki, TestPkiOptions};
use serde_json::json;

use super::app::{config_in, MERCHANT};
use super::Kind;

/// What a deployment's processes share.
pub struct Deployed {
    pub dir: tempfile::TempDir,
    /// The same resources, for the test's own reads (no call log).
    pub config: Config,
    pub pki: TestPki,
    /// The certificates' secret (`secretsmanager:` references name it).
    pub certificates: String,
    env: Vec<(String, String)>,
}

/// The roles of the stacks, as `infra/tests/test_iam.py` names them.
pub const ROLES: [&str; 8] = [
    "ingest",
    "worker",
    "operator",
    "console",
    "lambda-ingest",
    "lambda-worker",
    "lambda-events",
    "lambda-webhooks",
];

impl Deployed {
    /// Fresh resources on the emulator and the stacks' environment for them.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(&TestPkiOptions::default()).unwrap();
        let mut config = config_in(dir.path(), &pki);
        super::prepare(Kind::Aws, &mut config.backend, dir.path()).await;
        let aws = &config.backend.aws;
        let clients = paynotify_shared::backend::aws::Clients::new(aws).await;
        let trust = json!({ "root": pki.root_pem, "middle": pki.middle_pem }).to_string();
        // The data stack's name for it: `${Name}/unionpay-certificates`.
        let certificates = clients
            .secrets
            .create_secret()
            .name(format!("{}/unionpay-certificates", aws.queue))
            .secret_string(trust)
            .send()
            .await
            .unwrap()
            .arn
            .unwrap();
        let baked = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/docker/paynotify.toml");
        let mut env = resources_env(&config.backend);
        env.extend(
            [
                ("PAYNOTIFY_CONFIG", baked.to_owned()),
                ("PAYNOTIFY_LOG_FORMAT", "json".to_owned()),
                (
                    "PAYNOTIFY__SOURCES__UNIONPAY__MERCHANTS",
                    format!("[\"{MERCHANT}\"]"),
                ),
                (
                    "PAYNOTIFY__SOURCES__UNIONPAY__UNIONPAY__ROOT_CERT",
                    format!("secretsmanager:{certificates}#root"),
                ),
                (
                    "PAYNOTIFY__SOURCES__UNIONPAY__UNIONPAY__MIDDLE_CERT",
                    format!("secretsmanager:{certificates}#middle"),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        Self {
            dir,
            config,
            pki,
            certificates,
            env,
        }
    }

    /// The environment of a process of `role` (one of [`ROLES`]): the
    /// stacks' own, and where its AWS calls are written down when the test
    /// run collects them.
    pub fn env_as(&self, role: &str) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.extend(call_log(role));
        env
    }
}

/// The setting that writes a process of `role`'s AWS calls to a fresh
/// file, when the run collects them (`PAYNOTIFY_TEST_CALL_LOGS`).
fn call_log(role: &str) -> Option<(String, String)> {
    assert!(
        ROLES.contains(&role),
        "{role} is not one of the stacks' roles"
    );
    let dir = std::env::var_os("PAYNOTIFY_TEST_CALL_LOGS")?;
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!(
        "{role}--{}.jsonl",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let path = std::path::Path::new(&dir).join(name);
    Some((
        "PAYNOTIFY__BACKEND__AWS__CALL_LOG".into(),
        path.display().to_string(),
    ))
}

/// Where an in-process handler of `role` writes its AWS calls, when the
/// test run collects them (`backend.aws.call_log`).
pub fn call_log_path(role: &str) -> Option<std::path::PathBuf> {
    call_log(role).map(|(_, path)| path.into())
}

/// The environment that points a `paynotify` process of `role` at the
/// backend `config` names: nothing for the local backend (its
/// configuration file says it all), the AWS resources and the emulator for
/// an AWS one, and where its calls are written down.
pub fn backend_env(
    config: &paynotify_shared::config::BackendConfig,
    role: &str,
) -> Vec<(String, String)> {
    assert!(
        ROLES.contains(&role),
        "{role} is not one of the stacks' roles"
    );
    if config.kind != paynotify_shared::config::BackendKind::Aws {
        return Vec::new();
    }
    let mut env = resources_env(config);
    env.extend(call_log(role));
    env
}

/// The environment naming `config`'s AWS resources on the emulator, with
/// the emulator's credentials: what the stacks set, pointed here.
fn resources_env(config: &paynotify_shared::config::BackendConfig) -> Vec<(String, String)> {
    let aws = &config.aws;
    [
        ("PAYNOTIFY__BACKEND__KIND", "aws".to_owned()),
        (
            "PAYNOTIFY__BACKEND__AWS__ENDPOINT_URL",
            super::aws_endpoint(),
        ),
        ("PAYNOTIFY__BACKEND__AWS__REGION", aws.region.clone()),
        ("PAYNOTIFY__BACKEND__AWS__BUCKET", aws.bucket.clone()),
        ("PAYNOTIFY__BACKEND__AWS__QUEUE", aws.queue.clone()),
        (
            "PAYNOTIFY__BACKEND__AWS__DEAD_LETTER_QUEUE",
            aws.dead_letter_queue.clone(),
        ),
        (
            "PAYNOTIFY__BACKEND__AWS__WEBHOOKS_QUEUE",
            aws.webhooks_queue.clone(),
        ),
        ("PAYNOTIFY__BACKEND__AWS__TABLE", aws.table.clone()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
