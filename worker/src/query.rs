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

use paynotify_config::{Config, ConfigError, GatewayConfig, SchemeKind};
use paynotify_model::event::{EventOutcome, PaymentEvent};
use paynotify_ports::{
    ApplyOutcome, Archive, ArchiveError, Ledger, LedgerError, Watch, WatchStore,
};
use paynotify_records::envelope::{Envelope, Received};
use paynotify_runtime::gateway::{ClientSettings, GatewayClient, GatewayError};
use paynotify_runtime::scheme::unionpay::{
    classify, parse_raw, query_request, Fields, QueryAnswer, QueryTarget, SigningKey, VerifyError,
};
use paynotify_runtime::scheme::{SourceVerifier, VerifierSet};
use paynotify_runtime::secret::SecretRef;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::hook::ApplyHook;
use crate::Disposition;

mod gateway;
mod schedule;

pub use gateway::{Gateways, SourceGateway};
pub use schedule::*;

/// The status query endpoint, under the gateway's base URL.
pub const QUERY_PATH: &str = "/gateway/api/queryTrans.do";

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
    pub metrics: Option<Arc<paynotify_runtime::metrics::Metrics>>,
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
        backends: &paynotify_ports::Backends,
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

#[cfg(test)]
mod tests;
