//! UnionPay status queries (DESIGN §5): ask UnionPay's gateway about one
//! transaction, archive the exchange under `outbound/`, verify the answer
//! with the same chain and identity rules as a notification, and apply a
//! final answer through the same state machine and idempotency (its event
//! key is the one a notification of the same result has, so whichever comes
//! second is a duplicate). The scheduler ([`run_due`]) asks on its own about
//! payments whose result is late, one worker per transaction at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use paynotify_shared::config::{Config, ConfigError, GatewayConfig, SchemeKind};
use paynotify_shared::envelope::{Envelope, Received};
use paynotify_shared::event::{EventOutcome, PaymentEvent};
use paynotify_shared::gateway::{ClientSettings, GatewayClient, GatewayError};
use paynotify_shared::ports::{
    ApplyOutcome, Archive, ArchiveError, Ledger, LedgerError, Watch, WatchStore,
};
use paynotify_shared::scheme::unionpay::{
    classify, parse_raw, query_request, Fields, QueryAnswer, QueryTarget, SigningKey, VerifyError,
};
use paynotify_shared::scheme::{SourceVerifier, VerifierSet};
use paynotify_shared::secret::SecretRef;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::hook::ApplyHook;
use crate::Disposition;

/// The status query endpoint, under the gateway's base URL.
pub const QUERY_PATH: &str = "/gateway/api/queryTrans.do";

/// One source's way to UnionPay: its settings, the merchant's key and an
/// HTTP client.
#[derive(Debug)]
pub struct SourceGateway {
    pub source: String,
    pub config: GatewayConfig,
    pub key: SigningKey,
    pub client: GatewayClient,
}

impl SourceGateway {
    /// Reads the signing key and builds the client.
    ///
    /// # Errors
    /// A key that cannot be read or does not open, as a [`ConfigError`].
    pub async fn load(
        source: &str,
        config: &GatewayConfig,
        secrets: Option<&dyn paynotify_shared::ports::SecretStore>,
    ) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Source {
            source_name: source.to_owned(),
            why,
        };
        let read = |r: &SecretRef| {
            let r = r.clone();
            async move {
                paynotify_shared::secret::read(&r, secrets)
                    .await
                    .map_err(|e| format!("reading {r}: {e}"))
            }
        };
        let key_bytes = read(&config.signing_key).await.map_err(bad)?;
        let key = match (&config.signing_cert, &config.signing_key_password) {
            (Some(cert), _) => {
                let cert = read(cert).await.map_err(bad)?;
                SigningKey::from_pem(key_bytes.expose(), cert.expose())
            }
            (None, Some(password)) => {
                let password = read(password).await.map_err(bad)?;
                let text = String::from_utf8_lossy(password.expose());
                SigningKey::from_pkcs12(key_bytes.expose(), text.trim_end_matches(['\r', '\n']))
            }
            (None, None) => {
                return Err(bad(
                    "gateway has no signing_cert or signing_key_password".into()
                ))
            }
        }
        .map_err(|e| bad(format!("signing key {}: {e}", config.signing_key)))?;
        let client = GatewayClient::new(ClientSettings {
            timeout: Duration::from_millis(config.timeout_ms),
            retries: config.retries,
            max_requests_per_sec: config.max_requests_per_sec,
            first_backoff: Duration::from_millis(200),
        })
        .map_err(bad)?;
        Ok(Self {
            source: source.to_owned(),
            config: config.clone(),
            key,
            client,
        })
    }

    /// How long a claim on a watch lasts: twice every try of one query and
    /// its backoff. A worker that dies holding it leaves it to expire; the
    /// watch is then asked again (a final answer already applied is a
    /// duplicate).
    pub fn lease(&self) -> Duration {
        let one = Duration::from_millis(self.config.timeout_ms);
        (one * (self.config.retries + 2) * 2).max(Duration::from_secs(5))
    }

    /// A failure answer is final once the transaction is older than the
    /// last step of the schedule.
    pub fn failure_final_after(&self) -> Duration {
        Duration::from_secs(
            self.config
                .query_schedule_secs
                .last()
                .copied()
                .unwrap_or(7200),
        )
    }
}

/// The gateways of every UnionPay source that has one.
#[derive(Debug, Default, Clone)]
pub struct Gateways(BTreeMap<String, Arc<SourceGateway>>);

impl Gateways {
    /// Loads every `[sources.NAME.unionpay.gateway]`.
    ///
    /// # Errors
    /// The first source whose key cannot be used.
    pub async fn load(
        config: &Config,
        secrets: Option<&dyn paynotify_shared::ports::SecretStore>,
    ) -> Result<Self, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, source) in &config.sources {
            if source.scheme != SchemeKind::Unionpay {
                continue;
            }
            if let Some(g) = source.unionpay.as_ref().and_then(|u| u.gateway.as_ref()) {
                out.insert(
                    name.clone(),
                    Arc::new(SourceGateway::load(name, g, secrets).await?),
                );
            }
        }
        Ok(Self(out))
    }

    /// The gateway of `source`.
    pub fn get(&self, source: &str) -> Option<&Arc<SourceGateway>> {
        self.0.get(source)
    }

    /// Whether any source asks on its own.
    pub fn any_auto(&self) -> bool {
        self.0.values().any(|g| g.config.auto_query)
    }
}

/// Why a query gave no answer to act on.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("source {0:?} has no [sources.{0}.unionpay.gateway] table")]
    NoGateway(String),
    #[error("building the request: {0}")]
    Request(VerifyError),
    #[error("archiving the exchange: {0}")]
    Archive(ArchiveError),
    #[error("calling UnionPay: {0}")]
    Gateway(GatewayError),
    #[error("UnionPay answered HTTP {0}")]
    Http(u16),
    #[error("the answer was rejected at step {step}: {error}")]
    Rejected { step: &'static str, error: String },
    #[error("applying the answer: {0}")]
    Apply(String),
}

impl QueryError {
    /// Whether asking again soon may succeed (the network, the archive or
    /// the ledger failed), as opposed to an answer that was refused.
    pub fn transient(&self) -> bool {
        matches!(
            self,
            Self::Archive(_) | Self::Gateway(_) | Self::Http(_) | Self::Apply(_)
        )
    }
}

/// What one query found and did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueryReport {
    pub source: String,
    pub merchant: String,
    pub target: QueryTarget,
    /// The id of the exchange: its request and response are archived
    /// under it, and an event it applied is recorded with it.
    pub exchange_id: String,
    pub request_key: String,
    pub response_key: String,
    /// `succeeded`, `failed`, `in_process`, `not_found` or `refused`.
    pub answer: &'static str,
    pub code: Option<String>,
    pub message: Option<String>,
    /// The event of a final answer.
    pub event: Option<PaymentEvent>,
    /// What applying it did: `applied`, `duplicate`, … or `conflict: …`;
    /// `None` when nothing was applied (a failure not yet final, or no
    /// final answer).
    pub applied: Option<String>,
    /// Why the ledger refused the final answer (a transition its payment
    /// does not take): the answer is archived, the ledger unchanged, and a
    /// person must look (`unionpay query` exits 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl QueryReport {
    /// Whether UnionPay's answer ends the questions about this transaction.
    pub fn is_final(&self) -> bool {
        self.applied.is_some()
    }
}

/// Asks UnionPay and acts on the answer.
#[derive(Clone)]
pub struct Querier {
    pub archive: Arc<dyn Archive>,
    pub ledger: Arc<dyn Ledger>,
    pub watches: Arc<dyn WatchStore>,
    pub verifiers: Arc<VerifierSet>,
    pub gateways: Arc<Gateways>,
    /// Where answers are counted (`paynotify_worker_status_queries_total`).
    pub metrics: Option<Arc<paynotify_shared::metrics::Metrics>>,
    /// Watch ids this process knows exist: each pass over the parked events
    /// writes only the watches it has not seen (a create-only write of an
    /// existing watch still costs a DynamoDB write).
    pub known: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Querier {
    /// A querier on `backends`, with every source's verifier and gateway
    /// (what the CLI uses; a worker shares its own, [`crate::WorkerContext::querier`]).
    ///
    /// # Errors
    /// Certificates or keys that cannot be read.
    pub async fn build(
        config: &Config,
        backends: &paynotify_shared::backend::Backends,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            archive: backends.archive.clone(),
            ledger: backends.ledger.clone(),
            watches: backends.watches.clone(),
            verifiers: Arc::new(VerifierSet::new(
                SourceVerifier::all(config, backends.secrets.as_deref()).await?,
            )),
            gateways: Arc::new(Gateways::load(config, backends.secrets.as_deref()).await?),
            metrics: None,
            known: Arc::default(),
        })
    }

    /// Queries `target` of `merchant` at `source`; see the module docs.
    ///
    /// # Errors
    /// [`QueryError`]; its `transient` says whether to ask again soon.
    pub async fn query(
        &self,
        source: &str,
        merchant: &str,
        target: &QueryTarget,
    ) -> Result<QueryReport, QueryError> {
        self.query_known(source, merchant, target, None).await
    }

    /// [`Self::query`], knowing UnionPay's id of the transaction (from its
    /// notification): an answer that names none is about it.
    ///
    /// # Errors
    /// As [`Self::query`].
    pub async fn query_known(
        &self,
        source: &str,
        merchant: &str,
        target: &QueryTarget,
        query_id: Option<&str>,
    ) -> Result<QueryReport, QueryError> {
        let query_id = match target {
            QueryTarget::QueryId { query_id } => Some(query_id.as_str()),
            QueryTarget::Order { .. } => query_id,
        };
        let result = self.ask(source, merchant, target, query_id).await;
        if let Some(m) = &self.metrics {
            let answer = match &result {
                Ok(r) => r.answer,
                Err(QueryError::Rejected { .. }) => "rejected",
                Err(_) => "error",
            };
            m.status_query(source, answer);
        }
        result
    }

    async fn ask(
        &self,
        source: &str,
        merchant: &str,
        target: &QueryTarget,
        query_id: Option<&str>,
    ) -> Result<QueryReport, QueryError> {
        let gw = self
            .gateways
            .get(source)
            .ok_or_else(|| QueryError::NoGateway(source.to_owned()))?;
        let fields = query_request(&gw.key, merchant, &gw.config.biz_type, target)
            .map_err(QueryError::Request)?;
        let url = format!("{}{QUERY_PATH}", gw.config.url.trim_end_matches('/'));
        let (request, response) = self.exchange(gw, &url, &fields).await?;
        let answered_at = response.received_at;
        let report =
            |answer: &'static str, code: Option<String>, message: Option<String>| QueryReport {
                source: source.to_owned(),
                merchant: merchant.to_owned(),
                target: target.clone(),
                exchange_id: request.id.clone(),
                request_key: request.outbound_key(),
                response_key: response.outbound_key(),
                answer,
                code,
                message,
                event: None,
                applied: None,
                refused: None,
            };
        let fields = self.verified(source, &response)?;
        let answer = about(&fields, merchant, target)
            .and_then(|()| classify(source, &fields, query_id))
            .map_err(|e| rejected(source, &response, &e))?;
        let mut out = match &answer {
            QueryAnswer::Final(e) => report(
                answer.name(),
                e.result_code.clone(),
                e.result_message.clone(),
            ),
            QueryAnswer::InProcess { code, message } => {
                report(answer.name(), Some(code.clone()), Some(message.clone()))
            }
            QueryAnswer::NotFound { message } => {
                report(answer.name(), Some("34".into()), Some(message.clone()))
            }
            QueryAnswer::Refused { code, message } => {
                report(answer.name(), Some(code.clone()), Some(message.clone()))
            }
        };
        if let QueryAnswer::Final(event) = answer {
            let event = *event;
            let settled = event.outcome == EventOutcome::Succeeded
                || event.psp_time.is_some_and(|t| {
                    answered_at - t
                        >= time::Duration::try_from(gw.failure_final_after())
                            .unwrap_or(time::Duration::MAX)
                });
            if settled {
                out.applied = Some(
                    match crate::apply::apply(self.ledger.as_ref(), &request.id, event.clone())
                        .await
                    {
                        Disposition::Ack(kind) => kind.as_str().to_owned(),
                        Disposition::DeadLetter { reason, error } => {
                            let why = format!("{reason}: {error}");
                            out.refused = Some(why.clone());
                            why
                        }
                        Disposition::Retry(why) | Disposition::Panicked(why) => {
                            return Err(QueryError::Apply(why))
                        }
                        Disposition::Split { .. } => "split".to_owned(),
                    },
                );
            }
            out.event = Some(event);
        }
        info!(source, exchange_id = %out.exchange_id, payment_ref = out.event.as_ref().map_or("", |e| e.payment_ref.as_str()),
              answer = out.answer, applied = out.applied.as_deref().unwrap_or(""), direction = "response",
              "UnionPay status query answered");
        Ok(out)
    }

    /// Archives the request, sends it, archives the response (whatever its
    /// HTTP status): the two envelopes, under one id. An answer other than
    /// HTTP 200 is then an error.
    ///
    /// # Errors
    /// `Archive`, `Gateway` or `Http`.
    pub async fn exchange(
        &self,
        gw: &SourceGateway,
        url: &str,
        fields: &Fields,
    ) -> Result<(Envelope, Envelope), QueryError> {
        let envelope = |direction: &str, headers: Vec<(String, String)>, body: &[u8]| {
            let mut e = Envelope::new(Received {
                source: &gw.source,
                received_at: OffsetDateTime::now_utc(),
                remote_addr: None,
                method: "POST",
                path: url,
                query: None,
                headers,
                body,
            });
            e.direction = Some(direction.to_owned());
            e
        };
        let body = fields.to_form_body();
        let content_type = (
            "content-type".to_owned(),
            "application/x-www-form-urlencoded;charset=UTF-8".to_owned(),
        );
        let request = envelope("request", vec![content_type], body.as_bytes());
        self.archive
            .put(&request.outbound_key(), &request.to_json())
            .await
            .map_err(QueryError::Archive)?;
        // Every exchange leaves what came back beside its request, under
        // its id: the answer, a 5xx answer as it came, or, when nothing
        // came, the error (in `x-paynotify-error`).
        let (status, headers, bytes, failed) = match gw.client.post_form(url, &body).await {
            Ok(answer) => (Some(answer.status), answer.headers, answer.body, None),
            Err(e) => {
                let (status, mut headers, bytes) = match &e {
                    GatewayError::Status {
                        status,
                        headers,
                        body,
                        ..
                    } => (Some(*status), headers.clone(), body.clone()),
                    _ => (None, Vec::new(), Vec::new()),
                };
                headers.push(("x-paynotify-error".to_owned(), e.to_string()));
                (status, headers, bytes, Some(e))
            }
        };
        let mut response = envelope("response", headers, &bytes);
        response.id.clone_from(&request.id);
        response.status = status;
        let archived = self
            .archive
            .put(&response.outbound_key(), &response.to_json())
            .await;
        if let Some(e) = failed {
            if let Err(a) = archived {
                warn!(error = %a, exchange = %request.id, "archiving a failed exchange's answer failed");
            }
            return Err(QueryError::Gateway(e));
        }
        archived.map_err(QueryError::Archive)?;
        if let Some(code) = status.filter(|c| *c != 200) {
            return Err(QueryError::Http(code));
        }
        Ok((request, response))
    }

    /// Parses an archived raw answer of UnionPay's and verifies it as
    /// received, with the source's trust settings.
    ///
    /// # Errors
    /// `Rejected` with the failing step (logged).
    pub fn verified(&self, source: &str, response: &Envelope) -> Result<Fields, QueryError> {
        let verifiers = self.verifiers.current();
        let Some(verifier) = verifiers.get(source).and_then(SourceVerifier::as_unionpay) else {
            let e =
                VerifyError::MalformedBody(format!("source {source:?} is not a UnionPay source"));
            return Err(rejected(source, response, &e));
        };
        let body = response.body_bytes().unwrap_or_default();
        parse_raw(&body)
            .and_then(|fields| verifier.verify_fields(fields, response.received_at))
            .map(|v| v.fields)
            .map_err(|e| rejected(source, response, &e))
    }
}

/// Logs a refused answer and says why.
fn rejected(source: &str, response: &Envelope, e: &VerifyError) -> QueryError {
    warn!(source, exchange_id = %response.id, step = e.step(), reason = e.name(),
          direction = "response", "UnionPay's answer was rejected");
    QueryError::Rejected {
        step: e.step(),
        error: e.to_string(),
    }
}

/// Checks that a verified answer is about what was asked: an answer that
/// names a result (`respCode=00`) must name the merchant and the order (or
/// `queryId`); any other only the merchant ("no such transaction" may omit
/// the order's fields, a refused query need not echo the id).
fn about(fields: &Fields, merchant: &str, target: &QueryTarget) -> Result<(), VerifyError> {
    let mismatch = |field: &'static str, asked: &str| {
        let got = fields.get(field).unwrap_or("");
        (got != asked).then(|| VerifyError::MalformedField {
            field,
            why: format!("the answer is about {got:?}, the query asked about {asked:?}"),
        })
    };
    let wrong = match target {
        _ if fields.get("respCode") != Some("00") => mismatch("merId", merchant),
        QueryTarget::Order { order_id, txn_time } => mismatch("merId", merchant)
            .or_else(|| mismatch("orderId", order_id))
            .or_else(|| mismatch("txnTime", txn_time)),
        QueryTarget::QueryId { query_id } => mismatch("merId", merchant).or_else(|| {
            fields
                .get("queryId")
                .and_then(|_| mismatch("queryId", query_id))
        }),
    };
    wrong.map_or(Ok(()), Err)
}

/// What a pass of the scheduler did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Watches asked about.
    pub asked: usize,
    /// Watches that reached a final answer (or ran out of schedule).
    pub finished: usize,
    /// Watches another worker held.
    pub skipped: usize,
}

/// Asks about every watch due at `now` whose source asks on its own: claims
/// it (a conditional write; a watch another worker claimed is skipped),
/// queries, and writes what comes next. Also creates the watches of refunds
/// and voids parked for a payment that has not arrived within the first
/// step of the schedule.
///
/// # Errors
/// When the ledger cannot list watches (each watch's own failures are
/// logged and retried later).
pub async fn run_due(querier: &Querier, now: OffsetDateTime) -> Result<Pass, LedgerError> {
    watch_parked_payments(querier, now).await?;
    let mut pass = Pass::default();
    for w in querier
        .watches
        .due_watches(now, paynotify_shared::ports::WATCH_SCAN_LIMIT)
        .await?
    {
        let Some(gw) = querier.gateways.get(&w.source).cloned() else {
            continue;
        };
        if !gw.config.auto_query {
            continue;
        }
        let mut claimed = w.clone();
        claimed.version += 1;
        claimed.due_at = Some(now + gw.lease());
        match querier.watches.put_watch(&claimed).await {
            Ok(ApplyOutcome::Applied) => {}
            Ok(_) => {
                pass.skipped += 1;
                continue;
            }
            Err(e) => {
                warn!(watch = %w.id, error = %e, "claiming a status query failed");
                continue;
            }
        }
        pass.asked += 1;
        let result = querier
            .query_known(&w.source, &w.merchant, &w.target, w.query_id.as_deref())
            .await;
        let next = next_step(
            &claimed,
            &gw.config.query_schedule_secs,
            &result,
            OffsetDateTime::now_utc().max(now),
        );
        if next.finished.is_some() {
            pass.finished += 1;
            if next
                .finished
                .as_deref()
                .is_some_and(|f| f.starts_with("gave up"))
            {
                warn!(watch = %w.id, source = %w.source, answer = next.finished.as_deref().unwrap_or(""),
                      "status queries ran out of schedule without a final answer");
            }
        }
        match querier.watches.put_watch(&next).await {
            Ok(ApplyOutcome::Applied) => {}
            Ok(_) => {
                warn!(watch = %w.id, "a status query's claim expired before its answer was written")
            }
            Err(e) => {
                warn!(watch = %w.id, error = %e, "writing a status query's answer failed; it will be asked again")
            }
        }
    }
    Ok(pass)
}

/// The watch after one query: finished on a final answer, else due at the
/// next step of `schedule` (seconds after `since`, and at least the step's
/// gap from the one before after now); a transient failure is asked again
/// after a backoff without using a step.
pub fn next_step(
    claimed: &Watch,
    schedule: &[u64],
    result: &Result<QueryReport, QueryError>,
    now: OffsetDateTime,
) -> Watch {
    let mut next = claimed.clone();
    next.version += 1;
    // Step `n` is due `schedule[n]` after `since`, and never sooner than
    // its gap from the step before after now: asking that resumes late (a
    // watch registered late, a worker outage) keeps the schedule's spacing
    // instead of firing the steps already past back to back.
    let step_at = |n: usize| {
        let at = *schedule.get(n)?;
        let gap = n
            .checked_sub(1)
            .and_then(|p| schedule.get(p))
            .map_or(at, |before| at.saturating_sub(*before));
        Some(
            (claimed.since + time::Duration::seconds(at as i64))
                .max(now + time::Duration::seconds(gap as i64)),
        )
    };
    match result {
        Ok(report) => {
            next.attempts += 1;
            next.failures = 0;
            next.last_answer = Some(match (&report.code, &report.message) {
                (Some(c), Some(m)) => format!("{} ({c} {m})", report.answer),
                _ => report.answer.to_owned(),
            });
            if report.is_final() {
                next.finished = Some(report.answer.to_owned());
                next.due_at = None;
            } else {
                next.due_at = step_at(next.attempts as usize);
                if next.due_at.is_none() {
                    next.finished = Some(format!("gave up: {}", report.answer));
                }
            }
        }
        Err(e) if e.transient() => {
            next.failures += 1;
            next.last_answer = Some(format!("error: {e}"));
            // From the first step (at most 30 s), doubling: 1, 2, … 32 minutes
            // with UnionPay's schedule.
            let base = schedule.first().copied().unwrap_or(30).clamp(1, 30) as i64;
            let backoff = time::Duration::seconds(base * (1i64 << next.failures.min(6)));
            let give_up_at = claimed.since
                + time::Duration::seconds(schedule.last().copied().unwrap_or(0) as i64)
                + time::Duration::days(1);
            if now > give_up_at {
                next.finished = Some(format!("gave up: {e}"));
                next.due_at = None;
            } else {
                next.due_at = Some(now + backoff);
            }
        }
        Err(e) => {
            // A refused answer (forged, tampered, about another order) uses
            // a step: asking again at once would get the same.
            next.attempts += 1;
            next.last_answer = Some(format!("error: {e}"));
            next.due_at = step_at(next.attempts as usize);
            if next.due_at.is_none() {
                next.finished = Some(format!("gave up: {e}"));
            }
        }
    }
    next
}

/// Creates a watch of `target` (create-only: an existing one is left as
/// it is) due at the first step after `since`.
///
/// # Errors
/// When the ledger fails.
pub async fn watch(
    watches: &dyn WatchStore,
    gw: &SourceGateway,
    merchant: &str,
    target: QueryTarget,
    reason: &str,
    since: OffsetDateTime,
) -> Result<bool, LedgerError> {
    let w = new_watch(gw, merchant, target, reason, since);
    Ok(watches.put_watch(&w).await? == ApplyOutcome::Applied)
}

/// A watch of `target` due at the first step after `since`, not yet written.
fn new_watch(
    gw: &SourceGateway,
    merchant: &str,
    target: QueryTarget,
    reason: &str,
    since: OffsetDateTime,
) -> Watch {
    let first = gw
        .config
        .query_schedule_secs
        .first()
        .copied()
        .unwrap_or(300);
    Watch {
        id: Watch::id_for(&gw.source, merchant, &target),
        source: gw.source.clone(),
        merchant: merchant.to_owned(),
        target,
        query_id: None,
        reason: reason.to_owned(),
        since,
        attempts: 0,
        failures: 0,
        due_at: Some(since + time::Duration::seconds(first as i64)),
        last_answer: None,
        finished: None,
        version: 1,
    }
}

/// Refunds and voids parked for longer than the first step: ask about the
/// payment they name (by its `queryId`).
async fn watch_parked_payments(querier: &Querier, now: OffsetDateTime) -> Result<(), LedgerError> {
    let parked = querier
        .ledger
        .parked_before(now, paynotify_shared::ports::PARKED_SCAN_LIMIT)
        .await?;
    for p in parked {
        let e = &p.parked.event;
        let Some(gw) = querier.gateways.get(&e.source) else {
            continue;
        };
        if !gw.config.auto_query || p.parked.conflict.is_some() {
            continue;
        }
        let target = QueryTarget::QueryId {
            query_id: e.payment_ref.clone(),
        };
        if target.check().is_err() {
            continue;
        }
        // The schedule counts from when the event was parked.
        if watch(
            querier.watches.as_ref(),
            gw,
            &e.merchant,
            target,
            "parked",
            p.parked.parked_at,
        )
        .await?
        {
            info!(payment_key = %p.payment_key, source = %e.source, "a parked event's payment will be asked about");
        }
    }
    Ok(())
}

/// UnionPay's status queries as the worker's [`ApplyHook`]: an in-process
/// notification opens a watch before it is applied (so a crash after the
/// apply still leaves it), a success ends the watches of its transaction.
pub struct StatusQueries {
    watches: Arc<dyn WatchStore>,
    gateways: Arc<Gateways>,
}

impl StatusQueries {
    /// The hook for `gateways`; `None` when no source has a gateway.
    pub fn hook(
        watches: Arc<dyn WatchStore>,
        gateways: &Arc<Gateways>,
    ) -> Option<Arc<dyn ApplyHook>> {
        (!gateways.0.is_empty()).then(|| {
            Arc::new(Self {
                watches,
                gateways: gateways.clone(),
            }) as Arc<dyn ApplyHook>
        })
    }
}

#[async_trait::async_trait]
impl ApplyHook for StatusQueries {
    async fn before_apply(
        &self,
        event: &PaymentEvent,
        received_at: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        watch_in_process(self.watches.as_ref(), &self.gateways, event, received_at).await
    }

    fn wants_applied(&self, event: &PaymentEvent) -> bool {
        event.outcome == EventOutcome::Succeeded && self.gateways.get(&event.source).is_some()
    }

    async fn after_applied(
        &self,
        event: &PaymentEvent,
        notification_id: &str,
    ) -> Result<(), LedgerError> {
        // A watch left open is asked once more, and the answer is a duplicate.
        end_watches(
            self.watches.as_ref(),
            &self.gateways,
            event,
            notification_id,
        )
        .await
    }
}

/// After an in-process notification (UnionPay 03/04/05), ask about the
/// transaction on the source's schedule.
///
/// # Errors
/// When the ledger fails.
pub async fn watch_in_process(
    watches: &dyn WatchStore,
    gateways: &Gateways,
    event: &PaymentEvent,
    now: OffsetDateTime,
) -> Result<(), LedgerError> {
    if event.outcome != EventOutcome::Pending {
        return Ok(());
    }
    let Some(gw) = gateways.get(&event.source) else {
        return Ok(());
    };
    let Some(target) = paynotify_shared::scheme::unionpay::order_of(event) else {
        return Ok(());
    };
    if gw.config.auto_query {
        let mut w = new_watch(gw, &event.merchant, target, "in_process", now);
        w.query_id.clone_from(&event.psp_txn_id);
        watches.put_watch(&w).await?;
    }
    Ok(())
}

/// A notification that applied a success ends the watches of its order and
/// of its `queryId`: UnionPay need not be asked about it (each query counts
/// against `max_requests_per_sec`). A failure does not: UnionPay may still
/// change a front transaction's failure, and the schedule asks until then.
/// A watch written meanwhile by a query keeps that write (its version).
///
/// # Errors
/// When the ledger fails.
pub async fn end_watches(
    watches: &dyn WatchStore,
    gateways: &Gateways,
    event: &PaymentEvent,
    notification_id: &str,
) -> Result<(), LedgerError> {
    if event.outcome != EventOutcome::Succeeded || gateways.get(&event.source).is_none() {
        return Ok(());
    }
    let by_query_id = event.psp_txn_id.as_ref().map(|q| QueryTarget::QueryId {
        query_id: q.clone(),
    });
    let targets = paynotify_shared::scheme::unionpay::order_of(event)
        .into_iter()
        .chain(by_query_id);
    for target in targets {
        let id = Watch::id_for(&event.source, &event.merchant, &target);
        let Some(w) = watches.get_watch(&id).await? else {
            continue;
        };
        if w.finished.is_some() {
            continue;
        }
        let mut done = w.clone();
        done.version += 1;
        done.finished = Some("notified".to_owned());
        done.due_at = None;
        done.last_answer = Some(format!("notification {notification_id}"));
        // Refused: a query wrote it meanwhile; that answer stands.
        watches.put_watch(&done).await?;
    }
    Ok(())
}

/// Every `every` until `shutdown`, [`run_due`].
pub async fn watch_queries(
    querier: Querier,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = run_due(&querier, OffsetDateTime::now_utc()).await {
            warn!(error = %e, "reading due status queries failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const SINCE: OffsetDateTime = datetime!(2026-11-26 02:00:00 UTC);
    const SCHEDULE: [u64; 3] = [300, 600, 1800];

    fn claimed(attempts: u32) -> Watch {
        let target = QueryTarget::Order {
            order_id: "order0001".into(),
            txn_time: "20261126100000".into(),
        };
        Watch {
            id: Watch::id_for("up", "m", &target),
            source: "up".into(),
            merchant: "m".into(),
            target,
            query_id: None,
            reason: "expected".into(),
            since: SINCE,
            attempts,
            failures: 0,
            due_at: Some(SINCE),
            last_answer: None,
            finished: None,
            version: 2,
        }
    }

    fn report(answer: &'static str, applied: Option<&str>) -> Result<QueryReport, QueryError> {
        Ok(QueryReport {
            source: "up".into(),
            merchant: "m".into(),
            target: claimed(0).target,
            exchange_id: "x".into(),
            request_key: String::new(),
            response_key: String::new(),
            answer,
            code: None,
            message: None,
            event: None,
            applied: applied.map(str::to_owned),
            refused: None,
        })
    }

    #[test]
    fn a_final_answer_ends_the_watch_and_others_take_the_next_step() {
        let now = SINCE + time::Duration::minutes(5);
        let done = next_step(
            &claimed(0),
            &SCHEDULE,
            &report("succeeded", Some("applied")),
            now,
        );
        assert_eq!(
            (done.finished.as_deref(), done.due_at),
            (Some("succeeded"), None)
        );
        assert_eq!(done.version, 3);
        let again = next_step(&claimed(0), &SCHEDULE, &report("in_process", None), now);
        assert_eq!(again.due_at, Some(SINCE + time::Duration::seconds(600)));
        assert_eq!((again.attempts, again.finished), (1, None));
        // Asking resumed late (a watch registered late, a worker outage):
        // the steps already past keep their spacing from now on, rather
        // than firing back to back and giving up within seconds.
        let late = SINCE + time::Duration::hours(1);
        let behind = next_step(&claimed(0), &SCHEDULE, &report("not_found", None), late);
        assert_eq!(
            behind.due_at,
            Some(late + time::Duration::seconds(600 - 300))
        );
        let then = behind.due_at.unwrap();
        let after = next_step(&behind, &SCHEDULE, &report("not_found", None), then);
        assert_eq!(
            after.due_at,
            Some(then + time::Duration::seconds(1800 - 600))
        );
        let out = next_step(&claimed(2), &SCHEDULE, &report("not_found", None), late);
        assert_eq!(
            (out.finished.as_deref(), out.due_at),
            (Some("gave up: not_found"), None)
        );
    }

    #[test]
    fn transient_errors_back_off_without_a_step_and_refusals_use_one() {
        let now = SINCE + time::Duration::minutes(5);
        let transient = Err(QueryError::Http(503));
        let once = next_step(&claimed(1), &SCHEDULE, &transient, now);
        assert_eq!((once.attempts, once.failures), (1, 1));
        assert_eq!(once.due_at, Some(now + time::Duration::seconds(60)));
        let mut twice = claimed(1);
        twice.failures = 1;
        let twice = next_step(&twice, &SCHEDULE, &transient, now);
        assert_eq!(twice.due_at, Some(now + time::Duration::seconds(120)));
        // A day past the schedule, it gives up.
        let much_later = SINCE + time::Duration::days(2);
        let gone = next_step(&claimed(1), &SCHEDULE, &transient, much_later);
        assert!(gone.finished.unwrap().starts_with("gave up"));

        let refused = Err(QueryError::Rejected {
            step: "certificate",
            error: "forged".into(),
        });
        let next = next_step(&claimed(0), &SCHEDULE, &refused, now);
        assert_eq!(next.attempts, 1);
        assert_eq!(next.due_at, Some(SINCE + time::Duration::seconds(600)));
    }

    #[test]
    fn an_answer_about_another_transaction_is_refused() {
        let order = QueryTarget::Order {
            order_id: "order0001".into(),
            txn_time: "20261126100000".into(),
        };
        let answer = |pairs: &[(&str, &str)]| Fields::from_pairs(pairs.iter().copied()).unwrap();
        let ok = answer(&[
            ("respCode", "00"),
            ("merId", "m"),
            ("orderId", "order0001"),
            ("txnTime", "20261126100000"),
        ]);
        assert_eq!(about(&ok, "m", &order), Ok(()));
        let other_order = answer(&[
            ("respCode", "00"),
            ("merId", "m"),
            ("orderId", "order0002"),
            ("txnTime", "20261126100000"),
        ]);
        assert!(matches!(
            about(&other_order, "m", &order),
            Err(VerifyError::MalformedField {
                field: "orderId",
                ..
            })
        ));
        let other_merchant = answer(&[("respCode", "34"), ("merId", "n")]);
        assert!(matches!(
            about(&other_merchant, "m", &order),
            Err(VerifyError::MalformedField { field: "merId", .. })
        ));
        // "No such transaction" need not echo the order.
        assert_eq!(
            about(&answer(&[("respCode", "34"), ("merId", "m")]), "m", &order),
            Ok(())
        );
        let by_id = QueryTarget::QueryId {
            query_id: "Q1".into(),
        };
        let other_id = answer(&[("respCode", "00"), ("merId", "m"), ("queryId", "Q2")]);
        assert!(matches!(
            about(&other_id, "m", &by_id),
            Err(VerifyError::MalformedField {
                field: "queryId",
                ..
            })
        ));
    }
}
