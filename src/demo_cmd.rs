//! `paynotify demo`: the whole pipeline on one machine, with simulated
//! UnionPay traffic, and a summary a payment engineer can check.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use paynotify::app::{init_logging, App, AppOptions};
use paynotify::gateway_sim::{GatewaySim, Txn, TxnState};
use paynotify::simulate::{run_mix, Mix, Simulator};
use paynotify_shared::config::{Config, UNIONPAY_IDENTITY};
use paynotify_shared::ports::{wait_drained, LedgerExt};
use paynotify_shared::scheme::unionpay::{parse_form, QueryTarget};
use paynotify_shared::testpki::{generate, TestPkiOptions};
use paynotify_shared::{PaymentKey, PaymentStatus};
use paynotify_worker::query::{self, Querier};

use crate::demo_receiver::MerchantSide;
use crate::demo_summary::Summary;

pub(crate) const MERCHANT: &str = "777290058167151";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Payments to simulate.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Payments per second (0 = as fast as possible). Each payment is about
    /// two notifications (purchase, refunds, voids, retries).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Share of payments whose notification is delivered eight times at
    /// once (a PSP retrying while the first delivery is still in flight).
    #[arg(long, default_value_t = 0.05)]
    duplicates: f64,
    /// Send a payment's refunds, void and other deliveries this many seconds
    /// after its first delivery, as a PSP does, instead of at once.
    #[arg(long = "follow-up-secs", value_name = "SECS", value_parser = crate::simulate_cmd::parse_secs)]
    follow_up: Option<Duration>,
    /// Data directory (default: a fresh directory under the system temp dir).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Run on the AWS backend at this endpoint (an emulator such as
    /// moto_server) instead of the embedded one; creates uniquely named
    /// resources and reports AWS API calls per notification.
    #[arg(long)]
    aws_endpoint: Option<String>,
    /// Hold the merchant receiver's deliveries until every notification is
    /// applied, then deliver the backlog (measures the deliverer's pace).
    #[arg(long)]
    delivery_backlog: bool,
}

/// Payments UnionPay completes whose notifications never reach paynotify.
pub(crate) const LOST_PAYMENTS: usize = 3;

pub(crate) struct Recovered {
    pub(crate) paid: usize,
    pub(crate) queries: usize,
    pub(crate) elapsed: Duration,
}

/// The simulated gateway learns of payments whose notifications are never
/// sent; paynotify is told to expect them, and its workers' status queries
/// find them.
async fn recover_lost(
    config: &Config,
    app: &App,
    gateway: &GatewaySim,
    sim: &Simulator,
) -> anyhow::Result<Recovered> {
    let started = Instant::now();
    let querier = Querier::build(config, &app.backends).await?;
    let gw = querier
        .gateways
        .get("unionpay")
        .ok_or_else(|| anyhow::anyhow!("the demo's source has no gateway"))?;
    let mut keys = Vec::new();
    for i in 0..LOST_PAYMENTS {
        let query_id = format!(
            "lost{:06}{}",
            i,
            ulid::Ulid::new().to_string().get(20..26).unwrap_or("")
        );
        let fields = parse_form(sim.purchase(&query_id, 1000 + i as u64).as_bytes())?;
        let (order_id, txn_time) = (
            fields.get("orderId").unwrap_or_default().to_owned(),
            fields.get("txnTime").unwrap_or_default().to_owned(),
        );
        gateway.add(Txn {
            mer_id: MERCHANT.into(),
            order_id: order_id.clone(),
            txn_time: txn_time.clone(),
            query_id: query_id.clone(),
            txn_type: "01".into(),
            amount: 1000 + i as u64,
            orig_query_id: None,
            state: TxnState::Succeeded,
            settle_date: time::OffsetDateTime::now_utc().date(),
        });
        query::watch(
            app.backends.watches.as_ref(),
            gw,
            MERCHANT,
            QueryTarget::Order { order_id, txn_time },
            "expected",
            time::OffsetDateTime::now_utc(),
        )
        .await?;
        keys.push(PaymentKey::new("unionpay", MERCHANT, &query_id));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut paid = 0;
    while Instant::now() < deadline {
        paid = 0;
        for k in &keys {
            if app
                .backends
                .ledger
                .get_payment(k)
                .await?
                .is_some_and(|p| p.status == PaymentStatus::Paid)
            {
                paid += 1;
            }
        }
        if paid == keys.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Recovered {
        paid,
        queries: gateway.queries(),
        elapsed: started.elapsed(),
    })
}

/// The demo's machinery before any traffic: the test PKI, the simulated
/// UnionPay gateway, the merchant's receiver, the configuration written to
/// the data directory.
struct Setup {
    dir: std::path::PathBuf,
    pki: paynotify_shared::testpki::TestPki,
    forged: paynotify_shared::testpki::TestPki,
    gateway: GatewaySim,
    merchant_side: Option<MerchantSide>,
    config_path: std::path::PathBuf,
    config: Config,
}

async fn prepare(args: &Args) -> anyhow::Result<Setup> {
    let dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "paynotify-demo-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        ))
    });
    std::fs::create_dir_all(&dir)?;
    let pki_dir = dir.join("pki");
    let pki = generate(&TestPkiOptions::default())?;
    pki.write(&pki_dir, UNIONPAY_IDENTITY, &[MERCHANT.to_owned()])?;
    let forged = generate(&TestPkiOptions::default())?;
    // The merchant's own key, for its status queries to the simulated
    // UnionPay gateway (a throw-away certificate; UnionPay issues the real one).
    let merchant = generate(&TestPkiOptions::default())?;
    std::fs::write(pki_dir.join("merchant.key.pem"), &merchant.leaf_key_pem)?;
    std::fs::write(pki_dir.join("merchant.cert.pem"), &merchant.leaf_pem)?;
    let gateway = GatewaySim::start(
        pki.leaf_key_pem.as_bytes(),
        &pki.leaf_pem,
        merchant.leaf_pem.as_bytes(),
    )
    .await?;

    // The merchant's side hears every transition (embedded backend only).
    let merchant_side = match args.aws_endpoint {
        None => Some(MerchantSide::start(&pki_dir, args.delivery_backlog).await?),
        Some(_) => None,
    };
    let config_path = dir.join("paynotify.toml");
    let text = config_text(
        args.aws_endpoint.as_deref(),
        &pki,
        merchant_side.as_ref(),
        &gateway.url(),
    );
    std::fs::write(&config_path, text)?;
    let config = Config::load(&config_path)?;
    if args.aws_endpoint.is_some() {
        paynotify_shared::backend::aws::setup::init(&config.backend)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(m) = &merchant_side {
        // Before the deliverer starts, so that it reads the hold.
        m.hold(&paynotify_shared::backend::build(&config.backend).await?)
            .await?;
    }
    Ok(Setup {
        dir,
        pki,
        forged,
        gateway,
        merchant_side,
        config_path,
        config,
    })
}

/// The demo's configuration: the embedded backend, or uniquely named
/// resources at `aws_endpoint`.
fn config_text(
    aws_endpoint: Option<&str>,
    pki: &paynotify_shared::testpki::TestPki,
    merchant_side: Option<&MerchantSide>,
    gateway_url: &str,
) -> String {
    let backend = match aws_endpoint {
        None => "data_dir = \"data\"".to_owned(),
        Some(url) => {
            let id = ulid::Ulid::new().to_string().to_lowercase();
            format!(
                "kind = \"aws\"\n[backend.aws]\nendpoint_url = {url:?}\nbucket = \"paynotify-demo-{id}\"\n\
                 queue = \"paynotify-demo-{id}\"\ndead_letter_queue = \"paynotify-demo-{id}-dlq\"\n\
                 table = \"paynotify-demo-{id}\""
            )
        }
    };
    // An emulator answers slowly under the demo's burst: a message whose
    // visibility lapsed while it waited in a worker would come back and be
    // counted (and priced) as a duplicate delivery.
    let visibility = if aws_endpoint.is_some() { 120 } else { 10 };
    format!(
        "[backend]\nvisibility_timeout_secs = {visibility}\nmax_receives = 8\n{backend}\n\n\
         [ingest]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [worker]\nconcurrency = 16\nretry_min_delay_ms = 200\nretry_max_delay_secs = 2\nquery_check_secs = 1\n\n{}\n\
         [sources.unionpay.unionpay.gateway]\nsigning_key = \"file:pki/merchant.key.pem\"\n\
         signing_cert = \"file:pki/merchant.cert.pem\"\nurl = \"{url}\"\nfile_url = \"{url}\"\n\
         query_schedule_secs = [1, 2, 4, 8]\n\n{}",
        pki.config_snippet(UNIONPAY_IDENTITY, &[MERCHANT.to_owned()])
            .replace("file:root.pem", "file:pki/root.pem")
            .replace("file:middle.pem", "file:pki/middle.pem"),
        merchant_side.map_or("", |m| m.toml.as_str()),
        url = gateway_url,
    )
}

/// Runs the demo and prints the summary; exit 1 if anything was lost or
/// the ledger is not the one the simulation should have produced.
///
/// # Errors
/// Setup failures.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    init_logging("error");
    let setup = prepare(&args).await?;
    let config = &setup.config;
    let app = App::start(config, AppOptions::all()).await?;
    let addr = app
        .addr
        .ok_or_else(|| anyhow::anyhow!("ingest did not start"))?;
    let url = format!("http://{addr}/notify/unionpay");
    println!(
        "paynotify demo: ingest on {addr}, data in {}",
        setup.dir.display()
    );
    println!("simulating {} UnionPay payments ...", args.count);

    let pki = &setup.pki;
    let sim = Simulator::new(pki.leaf_key_pem.as_bytes(), &pki.leaf_pem, MERCHANT, &url)?;
    let sim_for_queries = sim.clone();
    let forger = Simulator::new(
        setup.forged.leaf_key_pem.as_bytes(),
        &setup.forged.leaf_pem,
        MERCHANT,
        &url,
    )?;
    let mix = Mix {
        count: args.count,
        rate: args.rate,
        duplicates: args.duplicates,
        tamper: 0.01,
        refunds: 0.3,
        voids: 0.05,
        early_refunds: 0.1,
        concurrency: 64,
        follow_up: args.follow_up,
    };
    let started = Instant::now();
    let report = run_mix(sim, Some(forger), &mix).await;
    let sent_in = started.elapsed();
    // Wait for the queue to drain (retried messages come back after their delay).
    let queue = app.backends.queue.as_ref();
    wait_drained(queue, Duration::from_secs(120), Duration::from_millis(100)).await?;
    let drained_in = started.elapsed();
    let stats = app.stats.snapshot();
    let dlq = app.backends.dead_letters.dlq_list(100_000).await?;
    let segments = app.backends.archive.list("raw/", None, None).await?.len();
    let left = app.backends.queue.depth().await?;
    let api_calls = app.backends.api_calls.as_ref().map(|c| c.snapshot());
    let reconciled =
        paynotify::reconcile::reconcile(config, &app.backends, None, None, |_, _| {}).await?;
    let recovered = recover_lost(config, &app, &setup.gateway, &sim_for_queries).await?;
    let heard = match &setup.merchant_side {
        Some(m) => Some(m.settle(&app.backends, Duration::from_secs(120)).await?),
        None => None,
    };
    app.stop().await?;

    let mut dlq_reasons = std::collections::BTreeMap::<String, u64>::new();
    for d in &dlq {
        *dlq_reasons.entry(d.reason.clone()).or_default() += 1;
    }
    let summary = Summary {
        archived: reconciled.archived as usize,
        report,
        stats,
        dead_lettered: dlq.len(),
        dlq_reasons,
        segments,
        left,
        sent_in,
        drained_in,
        reconciled,
        recovered,
        heard,
        api_calls,
    };
    let ok = summary.print(config, &setup.config_path, &setup.dir);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
