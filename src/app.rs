//! One paynotify process: backends from configuration, the ingest listeners
//! and the workers, started together and stopped gracefully.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use paynotify_ingest::IngestState;
use paynotify_shared::backend::{self, Backends};
use paynotify_shared::config::Config;
use paynotify_shared::faults::FaultyBackends;
use paynotify_shared::metrics::Metrics;
pub use paynotify_shared::telemetry::{init_logging, shutdown_signal};
use paynotify_worker::{Hooks, Stats, WorkerContext};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which parts to run in this process.
#[derive(Clone, Default)]
pub struct AppOptions {
    pub ingest: bool,
    pub worker: bool,
    pub hooks: Hooks,
    /// Wrap every port in a fault injector (tests and chaos runs).
    pub faults: bool,
}

impl AppOptions {
    /// Ingest and workers together, as `paynotify serve`.
    pub fn all() -> Self {
        Self {
            ingest: true,
            worker: true,
            hooks: Hooks::default(),
            faults: false,
        }
    }
}

/// A running process.
pub struct App {
    /// Where PSPs POST notifications (when ingest runs).
    pub addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    /// Where the read API listens (when `api.listen` is set).
    pub api_addr: Option<SocketAddr>,
    pub backends: Backends,
    pub stats: Arc<Stats>,
    /// What `/metrics` serves: every port call, ingest and worker counter.
    pub metrics: Arc<Metrics>,
    /// The fault switchboards, when started with `faults`.
    pub faults: Option<FaultyBackends>,
    shutdown: CancellationToken,
    ingest: Option<JoinHandle<std::io::Result<()>>>,
    worker: Option<JoinHandle<()>>,
    deliverer: Option<JoinHandle<()>>,
    api: Option<JoinHandle<std::io::Result<()>>>,
    watch: JoinHandle<Option<String>>,
}

impl App {
    /// Opens the backends and starts what `options` asks for.
    ///
    /// # Errors
    /// Configuration, backend or listener errors.
    pub async fn start(config: &Config, options: AppOptions) -> anyhow::Result<Self> {
        let mut backends = backend::build(&config.backend).await?;
        let faults = options.faults.then(|| FaultyBackends::wrap(&mut backends));
        // Metered outside the faults: an injected failure counts as one.
        let metrics = Metrics::new(backends.api_calls.clone());
        paynotify_shared::metered::meter(&mut backends, &metrics);
        let shutdown = CancellationToken::new();
        let watch = paynotify_shared::stores::watch(&backends, shutdown.clone());
        let stats = Arc::new(Stats::default());
        let (mut addr, mut admin_addr, mut ingest, mut worker) = (None, None, None, None);
        let mut deliverer = None;
        if options.worker {
            let ctx = WorkerContext::start(
                config,
                &backends,
                stats.clone(),
                metrics.clone(),
                options.hooks.clone(),
                &shutdown,
            )
            .await?;
            worker = Some(tokio::spawn(paynotify_worker::run(ctx, shutdown.clone())));
            deliverer = paynotify_deliver::start(config, &backends, &metrics, &shutdown).await?;
        }
        if options.ingest {
            let listener = TcpListener::bind(&config.ingest.listen)
                .await
                .with_context(|| format!("binding ingest to {}", config.ingest.listen))?;
            let admin = TcpListener::bind(&config.ingest.admin_listen)
                .await
                .with_context(|| format!("binding admin to {}", config.ingest.admin_listen))?;
            addr = Some(listener.local_addr()?);
            admin_addr = Some(admin.local_addr()?);
            let state = IngestState::new(config, &backends, metrics.clone(), options.worker);
            let (cfg, token) = (config.ingest.clone(), shutdown.clone());
            ingest = Some(tokio::spawn(async move {
                paynotify_ingest::run(listener, admin, state, &cfg, token).await
            }));
        }
        let api = crate::api::start(config, &backends, &shutdown).await?;
        Ok(Self {
            addr,
            admin_addr,
            api_addr: api.as_ref().map(|a| a.addr),
            backends,
            stats,
            metrics,
            faults,
            shutdown,
            ingest,
            worker,
            deliverer,
            api: api.map(|a| a.task),
            watch,
        })
    }

    /// A token that stops the process when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the shutdown token is cancelled, then for ingest to finish
    /// its requests and the workers their messages.
    ///
    /// # Errors
    /// A listener error, a panicked task, or a store that can no longer be
    /// written (which stopped the process).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        if let Some(i) = self.ingest {
            i.await.context("ingest task")??;
        }
        if let Some(w) = self.worker {
            w.await.context("worker task")?;
        }
        if let Some(d) = self.deliverer {
            d.await.context("deliverer task")?;
        }
        if let Some(a) = self.api {
            a.await.context("read API task")??;
        }
        if let Some(why) = self.watch.await.context("store watch")? {
            anyhow::bail!("stopped: {why}");
        }
        Ok(())
    }

    /// Cancels and waits.
    ///
    /// # Errors
    /// As [`App::wait`].
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}
