//! The ingest handler: an API Gateway HTTP API or Function URL request
//! (payload 2.0) → the exact body bytes (base64-decoded when the event says
//! so, never re-serialised) → archive → enqueue → the source's success
//! body, through the server ingest's [`store`].
//!
//! Routes and answers are the server's: `POST /notify/{source}`; 404 for
//! another path (empty body) or a source that is not configured
//! (`unknown source`); 405 for another method; 413 for a body over
//! `ingest.max_body_bytes`; 503 when the archive or the queue fails. API
//! Gateway keeps the stage in the path of a named stage, so the stacks use
//! the `$default` stage.

use std::time::Instant;

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderValue, Method, StatusCode};
use base64::Engine as _;
use paynotify_ingest::{header_pairs, store, Answer, IngestState, Pending};
use paynotify_shared::config::Config;
use paynotify_shared::envelope::Received;
use paynotify_shared::metered;
use paynotify_shared::metrics::UNKNOWN_SOURCE;
use paynotify_shared::notification_span;
use time::OffsetDateTime;
use tracing::{info, Instrument};

/// The ingest of one execution environment.
#[derive(Clone)]
pub struct Ingest {
    state: IngestState,
    max_body_bytes: usize,
}

impl Ingest {
    /// Opens the configured backends (SDK clients built once) and the
    /// sources' success bodies.
    ///
    /// # Errors
    /// When the backends cannot be opened.
    pub async fn from_config(config: &Config) -> anyhow::Result<Self> {
        let (backends, metrics) = metered::build(&crate::backend_config(config)).await?;
        Ok(Self::new(
            IngestState::new(&crate::ingest_config(config), &backends, metrics, false),
            config.ingest.max_body_bytes,
        ))
    }

    /// The handler on `state`, refusing bodies over `max_body_bytes`.
    pub fn new(state: IngestState, max_body_bytes: usize) -> Self {
        Self {
            state,
            max_body_bytes,
        }
    }

    /// Answers one request. Never fails: every outcome is an HTTP answer.
    pub async fn handle(&self, request: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        let received_at = OffsetDateTime::now_utc();
        let started = Instant::now();
        let http = &request.request_context.http;
        let path = request
            .raw_path
            .clone()
            .or_else(|| http.path.clone())
            .unwrap_or_default();
        let Some(source) = path
            .strip_prefix("/notify/")
            .filter(|s| !s.is_empty() && !s.contains('/'))
        else {
            return response(Answer::new(StatusCode::NOT_FOUND, ""));
        };
        if http.method != Method::POST {
            return response(Answer::new(StatusCode::METHOD_NOT_ALLOWED, ""));
        }
        let Some(success_body) = self.state.sources.get(source).cloned() else {
            self.state
                .metrics
                .responded(UNKNOWN_SOURCE, 404, started.elapsed());
            return response(Answer::unknown_source());
        };
        let span = notification_span!("ingest");
        span.record("source", source);
        let answer = self
            .accept(source, &path, received_at, success_body, &request)
            .instrument(span)
            .await;
        self.state
            .metrics
            .responded(source, answer.status.as_u16(), started.elapsed());
        response(answer)
    }

    async fn accept(
        &self,
        source: &str,
        path: &str,
        received_at: OffsetDateTime,
        success_body: String,
        request: &ApiGatewayV2httpRequest,
    ) -> Answer {
        let http = &request.request_context.http;
        let body = match body_bytes(request) {
            Ok(b) => b,
            Err(e) => {
                info!(error = %e, "request body rejected");
                return Answer::new(
                    StatusCode::BAD_REQUEST,
                    "request body is not valid base64\n",
                );
            }
        };
        if body.len() > self.max_body_bytes {
            info!(bytes = body.len(), "request body rejected: too large");
            return Answer::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        let pending = Pending::new(Received {
            source,
            received_at,
            remote_addr: http.source_ip.clone(),
            method: http.method.as_str(),
            path,
            query: request
                .raw_query_string
                .as_deref()
                .filter(|q| !q.is_empty()),
            headers: header_pairs(&request.headers),
            body: &body,
        });
        drop(body);
        store(&self.state, pending, success_body).await
    }
}

/// The body's exact bytes: base64-decoded when API Gateway encoded it
/// (binary media, and every body of a Function URL that is not text),
/// else the text's UTF-8 bytes as received.
fn body_bytes(request: &ApiGatewayV2httpRequest) -> Result<Vec<u8>, base64::DecodeError> {
    let text = request.body.as_deref().unwrap_or_default();
    if request.is_base64_encoded {
        base64::engine::general_purpose::STANDARD.decode(text)
    } else {
        Ok(text.as_bytes().to_vec())
    }
}

/// The payload 2.0 response for `answer`: a text body, never base64.
fn response(answer: Answer) -> ApiGatewayV2httpResponse {
    let mut r = ApiGatewayV2httpResponse::default();
    r.status_code = i64::from(answer.status.as_u16());
    r.headers.insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.body = Some(Body::Text(answer.body));
    r
}
