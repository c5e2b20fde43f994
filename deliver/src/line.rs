//! The sender of the webhook line (AWS backend; docs/events.md#webhooks-on-aws):
//! receives the outgoing events the events function put on the line, signs
//! and posts each to its endpoint, and settles it.
//!
//! A payment's messages to one endpoint are one message group: the queue
//! hands out the next only when the one before is done, so an event is
//! posted only after every earlier one of its payment to that endpoint was
//! delivered or held. A failed attempt is counted in the line's `FAILING`
//! record and the message made invisible until the schedule's next try; when
//! the schedule is spent the delivery is held, and so is every later event
//! of the payment to that endpoint, until `deliveries resend` puts a release
//! on the line: when it comes up the held events are posted in order. An
//! endpoint that fails for too long, or answers 410 Gone, is disabled: its
//! events are held until `deliveries enable`.
//!
//! Two ways to run it: [`LineSender::run`] receives from the line itself
//! (the workers' processes); [`LineSender::work_batch`] is handed what a
//! Lambda event source received, leaves the deletes to it and names what
//! must come back (the serverless stack's webhooks function).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paynotify_config::DeliveriesConfig;
use paynotify_model::outgoing::OutgoingEvent;
use paynotify_ports::{
    line_seq, Delivery, DeliveryStatus, Failing, LineItem, LineMessage, OutboxRecord, Receipt,
    SecretStore, WebhookLine,
};
use paynotify_runtime::metrics::Metrics;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::{next_try, DeliverError, Endpoint, Refusal, STATUS_EVERY};

/// How long the line keeps a message (SQS's longest retention, with a
/// day's margin): a retry schedule must end before.
const RETENTION: Duration = Duration::from_secs(13 * 24 * 3600);
/// How long a release waits while its endpoint is disabled (as this
/// process last read it: a status read comes sooner).
const DISABLED_WAIT: Duration = Duration::from_secs(6);
/// How often one process records an endpoint's success.
const SUCCESS_EVERY: Duration = Duration::from_secs(5);

/// What became of a message, for the ones after it in its group.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Settled: the group's next message may be worked on.
    Go,
    /// Left on the line for a later try: its group's later messages in the
    /// same receive are put back behind it.
    Stop,
}

/// The sender of one process.
pub struct LineSender {
    line: Arc<dyn WebhookLine>,
    endpoints: HashMap<String, Arc<Endpoint>>,
    settings: DeliveriesConfig,
    metrics: Arc<Metrics>,
    /// When this process last recorded each endpoint's success.
    recorded: Mutex<HashMap<String, Instant>>,
    /// The payments whose events this process held because their endpoint
    /// was disabled: released when it sees the endpoint enabled.
    held_while_disabled: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Whether a settled message is deleted by this sender (it received
    /// it) or by the event source that handed it in.
    deletes: bool,
    /// When the endpoints' status was last read ([`Self::refresh_status`]).
    status_read: Mutex<Option<Instant>>,
    /// The line's visibility timeout: no post is started that could end
    /// after a received message is handed out again.
    visibility: Duration,
    /// Messages settled and not deleted yet: deleted ten to a request
    /// when a receive's work ends ([`Self::run`]'s receives only).
    settled: Mutex<Vec<Receipt>>,
}

impl std::fmt::Debug for LineSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineSender")
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

/// A store error while working on a message: it comes again later.
type Failed = String;

impl LineSender {
    /// A sender for the endpoints of `config`, their secrets read now.
    ///
    /// # Errors
    /// An endpoint that cannot be set up, or a line that cannot be used.
    pub async fn new(
        config: &DeliveriesConfig,
        line: Arc<dyn WebhookLine>,
        secrets: Option<&dyn SecretStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DeliverError> {
        let waits: u64 = config.retry_schedule_secs.iter().sum();
        if Duration::from_secs(waits) >= RETENTION {
            return Err(DeliverError::Line(format!(
                "deliveries.retry_schedule_secs waits {waits} s in all: the webhook line keeps a \
                 message 14 days, so the schedule must end within 13"
            )));
        }
        let visibility = line
            .ready()
            .await
            .map_err(|e| DeliverError::Line(e.to_string()))?;
        let mut endpoints = HashMap::new();
        for e in &config.endpoints {
            // A post must end well inside the time a received message stays
            // invisible.
            let needs = post_budget(e.timeout_ms);
            if needs >= usable(visibility) {
                return Err(DeliverError::Line(format!(
                    "endpoint {}: timeout_ms {} needs a webhook line whose visibility timeout is over {} s; it is {} s",
                    e.name,
                    e.timeout_ms,
                    (needs.as_secs_f64() / 0.9).ceil(),
                    visibility.as_secs()
                )));
            }
            endpoints.insert(e.name.clone(), Arc::new(Endpoint::new(e, secrets).await?));
        }
        Ok(Self {
            line,
            endpoints,
            settings: config.clone(),
            metrics,
            recorded: Mutex::new(HashMap::new()),
            held_while_disabled: Mutex::new(HashMap::new()),
            deletes: true,
            status_read: Mutex::new(None),
            visibility,
            settled: Mutex::new(Vec::new()),
        })
    }

    /// This sender, handed its messages by an event source that deletes
    /// what it is not told must come back ([`Self::work_batch`]).
    #[must_use]
    pub fn for_event_source(mut self) -> Self {
        self.deletes = false;
        self
    }

    /// Works on messages an event source received (a Lambda SQS event
    /// source on the line): each group's in order, the groups at once, as
    /// [`Self::run`] does with its own receives. Returns the receipts of
    /// the messages that must come back: tried and not delivered (already
    /// made invisible until their next try), not settled for a store
    /// error, or behind one of those in their group (made visible again).
    /// The event source deletes the others; this sender deletes none.
    ///
    /// A group is not started on once `until` is nearer than two of its
    /// endpoint's timeouts: its messages come back for the next
    /// invocation, before the function's own timeout cuts a post short.
    pub async fn work_batch(
        &self,
        messages: Vec<LineMessage>,
        until: Option<Instant>,
    ) -> Vec<Receipt> {
        self.work_until(messages, until).await
    }

    /// The longest a post to any of its endpoints may take: a group is
    /// started only with this much time left.
    pub fn longest_post(&self) -> Duration {
        self.endpoints
            .values()
            .map(|e| post_budget(e.config.timeout_ms))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Reads each endpoint's status, as [`Self::run`]'s status loop does,
    /// when it was not read in the last few seconds (an event source's
    /// sender has no loop of its own: it calls this with every batch).
    pub async fn refresh_status(&self) {
        {
            let mut read = self.status_read.lock().unwrap_or_else(|p| p.into_inner());
            if read.is_some_and(|at| at.elapsed() < STATUS_EVERY) {
                return;
            }
            *read = Some(Instant::now());
        }
        for endpoint in self.endpoints.values() {
            self.status(endpoint).await;
        }
    }

    /// Sends until `shutdown` is cancelled; the messages in hand then
    /// finish (each post bounded by its endpoint's timeout).
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let receivers = (this.settings.concurrency / 10).max(1);
        let mut tasks = Vec::new();
        for _ in 0..receivers {
            let (this, shutdown) = (this.clone(), shutdown.clone());
            tasks.push(tokio::spawn(
                async move { this.receive_loop(shutdown).await },
            ));
        }
        let (status, stop) = (this.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move { status.status_loop(stop).await }));
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn receive_loop(&self, shutdown: CancellationToken) {
        let wait = Duration::from_secs(self.settings.line_wait_secs);
        let poll = Duration::from_millis(self.settings.poll_ms);
        while !shutdown.is_cancelled() {
            let got = tokio::select! {
                got = self.line.receive(10, wait) => got,
                () = shutdown.cancelled() => return,
            };
            match got {
                Ok(messages) if messages.is_empty() && wait.is_zero() => {
                    tokio::time::sleep(poll).await;
                }
                Ok(messages) => {
                    // Their visibility runs from when SQS answered (a long
                    // poll may have waited before): a tenth of it is kept
                    // for the calls around the posts. What this receive
                    // could not start on in time goes back at once, before
                    // SQS would hand it out again while this process still
                    // works on its group.
                    let until = Instant::now() + usable(self.visibility);
                    self.work_until(messages, Some(until)).await;
                    self.delete_settled().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook line unavailable; trying again");
                    tokio::time::sleep(poll).await;
                }
            }
        }
    }

    /// One receive's messages: each group's in order, the groups at once;
    /// the receipts of those not settled.
    async fn work_until(&self, messages: Vec<LineMessage>, until: Option<Instant>) -> Vec<Receipt> {
        let mut groups: Vec<Vec<LineMessage>> = Vec::new();
        let mut index: HashMap<(String, String), usize> = HashMap::new();
        for m in messages {
            let key = (m.endpoint.clone(), m.payment_key.clone());
            let i = *index.entry(key).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[i].push(m);
        }
        futures_util::future::join_all(groups.into_iter().map(|g| self.group(g, until)))
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// A group's messages in order, until one is not settled; the receipts
    /// of that one and those behind it.
    async fn group(&self, messages: Vec<LineMessage>, until: Option<Instant>) -> Vec<Receipt> {
        let mut back = Vec::new();
        let mut rest = messages.into_iter();
        for m in rest.by_ref() {
            let budget = self
                .endpoints
                .get(&m.endpoint)
                .map_or(Duration::ZERO, |e| post_budget(e.config.timeout_ms));
            if until.is_some_and(|until| Instant::now() + budget >= until) {
                // No time left for it: it goes back, with those behind it.
                self.put_back(&m).await;
                back.push(m.receipt);
                break;
            }
            match self.message(&m).await {
                Ok(Next::Go) => continue,
                Ok(Next::Stop) => {}
                Err(e) => {
                    // Left in flight: it comes again after the line's
                    // visibility timeout.
                    tracing::warn!(endpoint = %m.endpoint, payment_key = %m.payment_key, error = %e,
                                   "webhook line: a message could not be settled; it comes again");
                }
            }
            back.push(m.receipt);
            break;
        }
        // The group's later messages go back at once, behind it: the
        // queue hands none out while it is in flight.
        for later in rest {
            self.put_back(&later).await;
            back.push(later.receipt);
        }
        back
    }

    async fn put_back(&self, m: &LineMessage) {
        if let Err(e) = self.line.later(&m.receipt, Duration::ZERO).await {
            tracing::warn!(endpoint = %m.endpoint, error = %e,
                           "webhook line: a message could not be put back; it comes again after its visibility timeout");
        }
    }

    async fn message(&self, m: &LineMessage) -> Result<Next, Failed> {
        let Some(endpoint) = self.endpoints.get(&m.endpoint) else {
            // Not in this configuration (removed, or a deployment in
            // progress): kept, never dropped.
            if let LineItem::Event { event_id, body } = &m.item {
                let why = "the endpoint is not in this process's configuration";
                self.hold_new(m, event_id, body, 0, why.to_owned()).await?;
                tracing::error!(endpoint = %m.endpoint, event_id = %event_id,
                                "webhook line: event for an endpoint not configured here held");
            }
            return self.done(m).await;
        };
        match &m.item {
            LineItem::Event { event_id, body } => self.event(endpoint, m, event_id, body).await,
            LineItem::Release => self.release(endpoint, m).await,
        }
    }

    /// Settles a message: the event source deletes it (it is not among
    /// the receipts `work_batch` names), or this sender does when the
    /// receive's work ends. Until then it stays in flight, and so its
    /// group stays locked: nothing of the payment overtakes it. A process
    /// that dies before the delete sends it again, with its id.
    async fn done(&self, m: &LineMessage) -> Result<Next, Failed> {
        if self.deletes {
            self.settled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(m.receipt.clone());
        }
        Ok(Next::Go)
    }

    /// Deletes the settled messages, ten to a request. One not deleted
    /// comes again after the visibility timeout and is sent again with its
    /// id (or found held already).
    async fn delete_settled(&self) {
        let receipts = std::mem::take(&mut *self.settled.lock().unwrap_or_else(|p| p.into_inner()));
        if receipts.is_empty() {
            return;
        }
        let failed = self
            .line
            .done_many(&receipts)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect::<Vec<_>>();
        if let Some(e) = failed.first() {
            tracing::warn!(failed = failed.len(), error = %e,
                           "webhook line: settled messages could not be deleted; they come again and are sent again with their ids");
        }
    }

    async fn later(&self, m: &LineMessage, wait: Duration) -> Result<Next, Failed> {
        self.line
            .later(&m.receipt, wait)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Next::Stop)
    }

    /// Holds an event of the line that was never held before.
    async fn hold_new(
        &self,
        m: &LineMessage,
        event_id: &str,
        body: &str,
        attempts: u32,
        why: String,
    ) -> Result<(), Failed> {
        let record = record_of(event_id, &m.payment_key, body);
        let now = OffsetDateTime::now_utc();
        let delivery = Delivery {
            endpoint: m.endpoint.clone(),
            record,
            status: DeliveryStatus::DeadLettered,
            attempts,
            next_at: now,
            last_error: Some(why),
            last_attempt_at: (attempts > 0).then_some(now),
            delivered_at: None,
        };
        self.line.hold(&delivery).await.map_err(|e| e.to_string())?;
        self.metrics
            .delivery_attempt(&m.endpoint, "dead_lettered", None);
        Ok(())
    }

    async fn event(
        &self,
        endpoint: &Endpoint,
        m: &LineMessage,
        event_id: &str,
        body: &str,
    ) -> Result<Next, Failed> {
        let name = endpoint.config.name.as_str();
        let line = self
            .line
            .line(name, &m.payment_key)
            .await
            .map_err(|e| e.to_string())?;
        if line.held.iter().any(|d| d.record.event_id == event_id) {
            // Held already by an earlier receive that stopped before `done`.
            return self.done(m).await;
        }
        if let Some(first) = line.held.first() {
            let why = format!("waits behind {}, held", first.record.event_id);
            self.hold_new(m, event_id, body, 0, why).await?;
            return self.done(m).await;
        }
        if endpoint.disabled.load(Ordering::SeqCst) {
            let why = "the endpoint is disabled (paynotify deliveries enable)".to_owned();
            self.hold_new(m, event_id, body, 0, why).await?;
            self.held_while_disabled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(name.to_owned())
                .or_default()
                .insert(m.payment_key.clone());
            let next = self.done(m).await;
            if !endpoint.disabled.load(Ordering::SeqCst) {
                // Enabled meanwhile, perhaps after the status read released
                // this process's holds: release this one too.
                self.release_held_while_disabled(endpoint).await;
            }
            return next;
        }
        let before = line
            .failing
            .as_ref()
            .filter(|f| f.event_id == event_id)
            .map_or(0, |f| f.attempts);
        let posted = endpoint
            .post(event_id, bytes::Bytes::from(body.to_owned()))
            .await;
        match posted {
            Ok(()) => {
                if line.failing.is_some() {
                    self.forget_failing(name, &m.payment_key).await?;
                }
                self.delivered(endpoint, m, body).await;
                self.done(m).await
            }
            Err(refusal) => {
                let attempts = before + 1;
                self.refused(endpoint, event_id, &m.payment_key, attempts, &refusal)
                    .await;
                match next_try(
                    &self.settings.retry_schedule_secs,
                    before,
                    refusal.retry_after,
                ) {
                    Some(wait) => {
                        self.record_failing(name, &m.payment_key, event_id, attempts, &refusal)
                            .await?;
                        self.later(m, wait).await
                    }
                    None => {
                        self.hold_new(m, event_id, body, attempts, refusal.error)
                            .await?;
                        self.forget_failing(name, &m.payment_key).await?;
                        self.done(m).await
                    }
                }
            }
        }
    }

    /// Posts the payment's held events in order, each settled as it goes.
    async fn release(&self, endpoint: &Endpoint, m: &LineMessage) -> Result<Next, Failed> {
        let name = endpoint.config.name.as_str();
        if endpoint.disabled.load(Ordering::SeqCst) {
            return self.later(m, DISABLED_WAIT).await;
        }
        let line = self
            .line
            .line(name, &m.payment_key)
            .await
            .map_err(|e| e.to_string())?;
        let working = post_budget(endpoint.config.timeout_ms) + Duration::from_secs(30);
        for mut d in line.held {
            // The group stays locked while this release works.
            self.line
                .later(&m.receipt, working)
                .await
                .map_err(|e| e.to_string())?;
            let id = d.record.event_id.clone();
            let before = line
                .failing
                .as_ref()
                .filter(|f| f.event_id == id)
                .map_or(0, |f| f.attempts);
            let body = std::mem::take(&mut d.record.body);
            match endpoint.post(&id, bytes::Bytes::from(body.clone())).await {
                Ok(()) => {
                    self.line
                        .unhold(name, &m.payment_key, d.record.seq)
                        .await
                        .map_err(|e| e.to_string())?;
                    if before > 0 {
                        self.forget_failing(name, &m.payment_key).await?;
                    }
                    self.delivered(endpoint, m, &body).await;
                }
                Err(refusal) => {
                    let attempts = before + 1;
                    self.refused(endpoint, &id, &m.payment_key, attempts, &refusal)
                        .await;
                    if let Some(wait) = next_try(
                        &self.settings.retry_schedule_secs,
                        before,
                        refusal.retry_after,
                    ) {
                        self.record_failing(name, &m.payment_key, &id, attempts, &refusal)
                            .await?;
                        return self.later(m, wait).await;
                    }
                    let now = OffsetDateTime::now_utc();
                    d.record.body = body;
                    d.attempts = attempts;
                    d.last_error = Some(refusal.error);
                    d.last_attempt_at = Some(now);
                    d.next_at = now;
                    self.line.hold(&d).await.map_err(|e| e.to_string())?;
                    self.metrics.delivery_attempt(name, "dead_lettered", None);
                    self.forget_failing(name, &m.payment_key).await?;
                    return self.done(m).await;
                }
            }
        }
        self.done(m).await
    }

    async fn record_failing(
        &self,
        endpoint: &str,
        payment_key: &str,
        event_id: &str,
        attempts: u32,
        refusal: &Refusal,
    ) -> Result<(), Failed> {
        let failing = Failing {
            event_id: event_id.to_owned(),
            attempts,
            error: refusal.error.clone(),
        };
        self.line
            .fail(endpoint, payment_key, Some(&failing))
            .await
            .map_err(|e| e.to_string())
    }

    async fn forget_failing(&self, endpoint: &str, payment_key: &str) -> Result<(), Failed> {
        self.line
            .fail(endpoint, payment_key, None)
            .await
            .map_err(|e| e.to_string())
    }

    /// A delivered event: metrics, the log, and the endpoint's success (at
    /// most every few seconds per process).
    async fn delivered(&self, endpoint: &Endpoint, m: &LineMessage, body: &str) {
        let name = endpoint.config.name.as_str();
        let now = OffsetDateTime::now_utc();
        let recorded_at = serde_json::from_str::<OutgoingEvent>(body)
            .ok()
            .map(|e| e.recorded_at);
        let lag = recorded_at.and_then(|t| (now - t).try_into().ok());
        self.metrics.delivery_attempt(name, "delivered", lag);
        tracing::debug!(endpoint = name, payment_key = %m.payment_key, "delivered");
        let due = {
            let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
            let due = recorded
                .get(name)
                .is_none_or(|at| at.elapsed() >= SUCCESS_EVERY);
            if due {
                recorded.insert(name.to_owned(), Instant::now());
            }
            due
        };
        if due {
            if let Err(e) = self.line.succeeded(name, now).await {
                tracing::warn!(endpoint = name, error = %e, "recording the endpoint's success failed");
            }
        }
    }

    /// A failed attempt: metrics, the log, the endpoint's failing time, and
    /// the endpoint disabled when it answered 410 Gone.
    async fn refused(
        &self,
        endpoint: &Endpoint,
        event_id: &str,
        payment_key: &str,
        attempts: u32,
        refusal: &Refusal,
    ) {
        let name = endpoint.config.name.as_str();
        let spent = next_try(&self.settings.retry_schedule_secs, attempts - 1, None).is_none();
        if spent {
            // The message is what the stacks' metric filters count
            // (WebhooksHeld).
            tracing::error!(endpoint = name, event_id, payment_key, attempts, error = %refusal.error,
                            help = "the payment's later events wait: paynotify deliveries resend",
                            "delivery held");
        } else {
            self.metrics.delivery_attempt(name, "failed", None);
            tracing::warn!(endpoint = name, event_id, payment_key, attempt = attempts, error = %refusal.error,
                           "delivery failed; trying again");
        }
        // The failing time is written by every failure (at most once in
        // effect: `if_not_exists`); the next success removes it.
        if let Err(e) = self.line.failed_at(name, OffsetDateTime::now_utc()).await {
            tracing::warn!(endpoint = name, error = %e, "recording the endpoint's failure failed");
        }
        self.recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if refusal.gone {
            self.disable(endpoint, "the endpoint answered 410 Gone".to_owned())
                .await;
        }
    }

    /// Puts a release on each line this process held while `endpoint` was
    /// disabled (`deliveries enable` releases every line the table lists;
    /// this covers what was held after that listing).
    async fn release_held_while_disabled(&self, endpoint: &Endpoint) {
        let name = endpoint.config.name.as_str();
        let payments = self
            .held_while_disabled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .unwrap_or_default();
        for (i, p) in payments.iter().enumerate() {
            if let Err(e) = self.line.release(name, p).await {
                tracing::warn!(endpoint = name, payment_key = %p, error = %e,
                               "releasing held events failed; paynotify deliveries enable releases them");
                // Kept for the next time it is seen enabled.
                self.held_while_disabled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(name.to_owned())
                    .or_default()
                    .extend(payments.iter().skip(i).cloned());
                return;
            }
        }
    }

    async fn disable(&self, endpoint: &Endpoint, why: String) {
        let name = endpoint.config.name.as_str();
        endpoint.disabled.store(true, Ordering::SeqCst);
        match self.line.set_disabled(name, Some(&why)).await {
            Ok(()) => {
                tracing::error!(endpoint = name, reason = %why, "deliveries endpoint disabled")
            }
            Err(e) => tracing::warn!(endpoint = name, reason = %why, error = %e,
                                     "recording that the endpoint is disabled failed"),
        }
    }

    /// Reads each endpoint's status into the gauges and its disabled flag,
    /// and disables one that failed for too long.
    async fn status_loop(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            for endpoint in self.endpoints.values() {
                self.status(endpoint).await;
            }
            tokio::select! {
                () = tokio::time::sleep(STATUS_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn status(&self, endpoint: &Endpoint) {
        let name = endpoint.config.name.as_str();
        let s = match self.line.endpoint_status(name).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(endpoint = name, error = %e, "reading the endpoint's status failed");
                return;
            }
        };
        self.metrics
            .delivery_status(name, s.pending, s.dead_lettered, None, s.disabled.is_some());
        let was = endpoint
            .disabled
            .swap(s.disabled.is_some(), Ordering::SeqCst);
        if was && s.disabled.is_none() {
            tracing::info!(
                endpoint = name,
                "deliveries endpoint enabled: its held events are released"
            );
            self.release_held_while_disabled(endpoint).await;
        }
        if let Some(why) = &s.disabled {
            // Logged at every status read while it lasts: the stacks'
            // metric filters count it (WebhookEndpointDisabled).
            tracing::error!(endpoint = name, reason = %why, held = s.dead_lettered,
                            help = "its events are held: paynotify deliveries enable",
                            "deliveries endpoint disabled");
            return;
        }
        let now = OffsetDateTime::now_utc();
        let too_long = s
            .failing_since
            .filter(|since| now - *since >= Duration::from_secs(self.settings.disable_after_secs));
        if let Some(since) = too_long {
            self.disable(endpoint, format!("every attempt failed since {since}"))
                .await;
        }
    }
}

/// The longest a post to an endpoint with `timeout_ms` may take: its
/// connect and its answer, each within the timeout.
fn post_budget(timeout_ms: u64) -> Duration {
    Duration::from_millis(timeout_ms) * 2
}

/// How long after a receive a post may still end: the line's visibility
/// timeout, less a tenth for the calls around it.
fn usable(visibility: Duration) -> Duration {
    visibility - visibility / 10
}

/// The record of an event on the line, from its body (the event's JSON, as
/// the events function put it there). A body that is not an event keeps its
/// id and payment, so that it is still held and listed.
fn record_of(event_id: &str, payment_key: &str, body: &str) -> OutboxRecord {
    match serde_json::from_str::<OutgoingEvent>(body) {
        Ok(e) => OutboxRecord {
            seq: line_seq(e.payment.version, e.payment.sequence),
            event_id: e.id,
            payment_key: e.payment.key,
            event_type: e.event_type,
            source: e.payment.source,
            merchant: e.payment.merchant,
            recorded_at: e.recorded_at,
            body: body.to_owned(),
        },
        Err(_) => OutboxRecord {
            seq: u64::MAX,
            event_id: event_id.to_owned(),
            payment_key: payment_key.to_owned(),
            event_type: paynotify_model::outgoing::EventType::NeedsAttention,
            source: String::new(),
            merchant: String::new(),
            recorded_at: OffsetDateTime::now_utc(),
            body: body.to_owned(),
        },
    }
}
