//! The worker's context: built from the configuration and the backends, and its periodic duties (parked events, certificates).

use super::*;

impl WorkerContext {
    /// Builds the worker for `config` on `backends` and starts its
    /// background tasks ([`WorkerContext::build`], then
    /// [`WorkerContext::spawn_refresh`] and [`watch_parked`] every
    /// `worker.parked_check_secs`), until `shutdown`.
    ///
    /// # Errors
    /// When a source's certificates cannot be read or do not chain.
    pub async fn start(
        config: &Config,
        backends: &Backends,
        stats: Arc<Stats>,
        metrics: Arc<Metrics>,
        hooks: Hooks,
        shutdown: &CancellationToken,
    ) -> Result<Self, paynotify_config::ConfigError> {
        let ctx = Self::build(config, backends, stats, metrics, hooks).await?;
        ctx.spawn_refresh(config, backends, shutdown);
        tokio::spawn(watch_parked(
            backends.ledger.clone(),
            config.worker.parked_alert_secs,
            Duration::from_secs(config.worker.parked_check_secs.max(1)),
            shutdown.clone(),
        ));
        if ctx.gateways.any_auto() {
            tokio::spawn(query::watch_queries(
                ctx.querier(),
                Duration::from_secs(config.worker.query_check_secs.max(1)),
                shutdown.clone(),
            ));
        }
        Ok(ctx)
    }

    /// Builds the worker for `config` on `backends`, loading every source's
    /// verifier; starts nothing.
    ///
    /// # Errors
    /// When a source's certificates cannot be read or do not chain.
    pub async fn build(
        config: &Config,
        backends: &Backends,
        stats: Arc<Stats>,
        metrics: Arc<Metrics>,
        hooks: Hooks,
    ) -> Result<Self, paynotify_config::ConfigError> {
        // The worker's verifiers and gateways are its querier's.
        let q = query::Querier::build(config, backends).await?;
        Ok(Self {
            queue: backends.queue.clone(),
            ledger: backends.ledger.clone(),
            watches: backends.watches.clone(),
            archive: backends.archive.clone(),
            verifiers: q.verifiers,
            apply_hook: query::StatusQueries::hook(backends.watches.clone(), &q.gateways),
            gateways: q.gateways,
            known_watches: q.known,
            config: config.worker.clone(),
            max_receives: config.backend.max_receives,
            stats,
            metrics,
            hooks,
        })
    }

    /// What asks UnionPay about late payments, on this worker's ports.
    pub fn querier(&self) -> query::Querier {
        query::Querier {
            archive: self.archive.clone(),
            ledger: self.ledger.clone(),
            watches: self.watches.clone(),
            verifiers: self.verifiers.clone(),
            gateways: self.gateways.clone(),
            metrics: Some(self.metrics.clone()),
            known: self.known_watches.clone(),
        }
    }

    /// When a certificate comes from Secrets Manager, starts the task that
    /// reloads the verifiers every `backend.aws.secrets_refresh_secs` until
    /// `shutdown` ([`refresh_verifiers`]).
    pub fn spawn_refresh(
        &self,
        config: &Config,
        backends: &Backends,
        shutdown: &CancellationToken,
    ) {
        if uses_secrets_manager(config) {
            tokio::spawn(refresh_verifiers(
                self.verifiers.clone(),
                config.clone(),
                backends.secrets.clone(),
                Duration::from_secs(config.backend.aws.secrets_refresh_secs.max(1)),
                shutdown.clone(),
            ));
        }
    }
}

/// Every `every` until `shutdown`, [`check_parked`].
pub async fn watch_parked(
    ledger: Arc<dyn Ledger>,
    alert_secs: u64,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            () = shutdown.cancelled() => return,
        }
        // A failure is logged by `check_parked`; the next round tries again.
        let _ = check_parked(ledger.as_ref(), alert_secs).await;
    }
}

/// Reads the parked events and, when some are older than `alert_secs` or
/// contradict their payment, logs one warning `parked events need
/// attention` with `overdue` and `conflicted` counts (the stacks' log metric
/// filters alarm on it; `/metrics` has the same counts as gauges where
/// Prometheus scrapes).
///
/// # Errors
/// When the ledger cannot be read (logged as well).
pub async fn check_parked(
    ledger: &dyn Ledger,
    alert_secs: u64,
) -> Result<ParkedCounts, paynotify_ports::LedgerError> {
    let now = OffsetDateTime::now_utc();
    match ledger.parked_before(now, PARKED_SCAN_LIMIT).await {
        Ok(parked) => {
            let counts = ParkedCounts::of(&parked, now, alert_secs);
            if counts.overdue + counts.conflicted > 0 {
                warn!(
                    overdue = counts.overdue,
                    conflicted = counts.conflicted,
                    "parked events need attention"
                );
            }
            Ok(counts)
        }
        Err(e) => {
            warn!(error = %e, "reading parked events failed");
            Err(e)
        }
    }
}

/// Reloads every source's certificates each `every` (from files or Secrets
/// Manager) until `shutdown`, so a rotated certificate is used without a
/// restart. A failed reload keeps the verifiers in use and is logged.
pub async fn refresh_verifiers(
    set: Arc<VerifierSet>,
    config: Config,
    secrets: Option<Arc<dyn paynotify_ports::SecretStore>>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            () = shutdown.cancelled() => return,
        }
        match SourceVerifier::all(&config, secrets.as_deref()).await {
            Ok(v) => set.replace(v),
            Err(e) => warn!(error = %e, "reloading certificates failed; keeping the current ones"),
        }
    }
}
