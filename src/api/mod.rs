//! The read API (docs/api.md): JSON over HTTP on its own listener
//! (`api.listen`, never the ingest port), for operators and the merchant's
//! services. Every request carries a key (`Authorization: Bearer KEY`): no
//! key, or one that is not configured, is 401 on every path, so nothing is
//! learnt without one; a `read` key reads, an `operate` key also acts (a
//! `read` key's action is 403). Every action is recorded in the archive
//! under `audit/api/` with the key's name, what was asked and what it did.
//!
//! The routes, and the OpenAPI document, come from one table
//! ([`routes::ROUTES`]).

pub mod console;
pub mod keys;
pub mod oidc;
pub mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use paynotify_shared::backend::Backends;
use paynotify_shared::config::{ApiScope, Config};
use paynotify_shared::envelope::rfc3339_ms;
use paynotify_shared::ports::{DeadLettersExt, DeliveryFilter, DeliveryStatus};
use paynotify_shared::serve::{serve, Limits};
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::parked::SetAside;
use crate::views;
use crate::views::deliveries::Resent;
use keys::{Key, Keys};
use routes::{Op, ROUTES};

/// Where the action records go in the archive.
pub const AUDIT_PREFIX: &str = "audit/api/";
/// The largest request body taken (actions' JSON is small).
const MAX_BODY: usize = 16 * 1024;
/// Open connections at most (operators and a few services).
const MAX_CONNECTIONS: usize = 256;

#[derive(Clone)]
struct Api {
    config: Arc<Config>,
    backends: Backends,
    keys: Arc<Keys>,
    /// The console's users behind a load balancer's OIDC sign-in.
    oidc: Option<Arc<oidc::AlbOidc>>,
}

/// An answer that is not a success: its status and words, as JSON.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(why: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, why.into())
    }

    fn not_found(what: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, what.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        // The words go to the log; the caller learns only that a store
        // failed (a backend's error can name its resources).
        tracing::warn!(error = %format!("{e:#}"), "read API: a store failed");
        Self(
            StatusCode::SERVICE_UNAVAILABLE,
            "a store could not be reached; try again".into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = answer(self.0, &json!({ "error": self.1 }));
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"paynotify\""),
            );
        }
        r
    }
}

/// A JSON answer that no cache keeps and no browser sniffs.
fn answer(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn ok(body: &Value) -> Result<Response, ApiError> {
    Ok(answer(StatusCode::OK, body))
}

/// A running API listener.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `api.listen`, reads the keys and serves until `shutdown`.
///
/// # Errors
/// The address cannot be bound, or a key cannot be read.
pub async fn start(
    config: &Config,
    backends: &Backends,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<ApiServer>> {
    let Some(listen) = config.api.listen else {
        return Ok(None);
    };
    let keys = Keys::load(&config.api, backends.secrets.as_deref()).await?;
    let oidc = match &config.api.oidc {
        Some(o) => Some(Arc::new(
            oidc::AlbOidc::load(o, backends.secrets.as_deref()).await?,
        )),
        None => None,
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the read API to {listen}"))?;
    let addr = listener.local_addr()?;
    let app = router(Api {
        config: Arc::new(config.clone()),
        backends: backends.clone(),
        keys: Arc::new(keys),
        oidc,
    });
    // The accept loop ingest and the admin listeners use: a header-read
    // timeout (also an idle keep-alive's), a cap on open connections, a
    // bounded drain.
    let limits = Limits {
        header_read_timeout: std::time::Duration::from_secs(10),
        max_connections: MAX_CONNECTIONS,
        drain: std::time::Duration::from_secs(10),
    };
    let task = tokio::spawn(serve(listener, app, limits, shutdown.clone()));
    tracing::info!(%addr, "read API listening");
    Ok(Some(ApiServer { addr, task }))
}

fn handler(op: Op) -> MethodRouter<Api> {
    match op {
        Op::OpenApi => get(openapi),
        Op::Payment => get(payment),
        Op::PaymentsByOrder => get(payments_by_order),
        Op::SearchPayments => get(search_payments),
        Op::Notification => get(notification),
        Op::DeadLetters => get(dead_letters),
        Op::DeadLetter => get(dead_letter),
        Op::Redrive => post(redrive),
        Op::Parked => get(parked),
        Op::Endpoints => get(endpoints),
        Op::Deliveries => get(deliveries),
        Op::Resend => post(resend),
        Op::Reconcile => get(reconcile_latest),
        Op::ResolveParked => post(resolve_parked),
        Op::DeadLetterParked => post(dead_letter_parked),
    }
}

fn router(api: Api) -> Router {
    let mut router = Router::new();
    for r in ROUTES {
        router = router.route(r.path, handler(r.op));
    }
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(api.clone(), authorize));
    // The console's pages sign in with a cookie instead of the header.
    console::router(api.clone())
        .merge(router)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// Who is asking, for the handlers (the audit records name the key).
#[derive(Debug, Clone)]
struct Caller(Key);

/// Every request: a configured key, or 401 (whatever the path); an action
/// needs an `operate` key, or 403.
async fn authorize(State(api): State<Api>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme's name is case-insensitive (RFC 9110 §11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    let Some(key) = presented.and_then(|p| api.keys.find(p.as_bytes())) else {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "an API key is needed: Authorization: Bearer KEY".into(),
        )
        .into_response();
    };
    let needs = if request.method() == Method::GET || request.method() == Method::HEAD {
        ApiScope::Read
    } else {
        ApiScope::Operate
    };
    if key.scope < needs {
        return ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "key {:?} may only read; this needs an operate key",
                key.name
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(Caller(key.clone()));
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route (GET /api/v1/openapi.json lists them)")
}

async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "not a method of this route (GET /api/v1/openapi.json lists them)".into(),
    )
}

async fn openapi() -> Result<Response, ApiError> {
    ok(&routes::document())
}

/// An action's JSON body, or 400 saying what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("the body: {e}")))
}

/// `?limit=`: 1 to 1000, 100 when absent.
fn limit(query: &HashMap<String, String>) -> Result<usize, ApiError> {
    views::limit_of(query.get("limit").map(String::as_str)).map_err(ApiError::bad)
}

async fn payment(
    State(api): State<Api>,
    Path((source, merchant, reference)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if !api.config.sources.contains_key(&source) {
        return Err(ApiError::not_found(format!("no source {source:?}")));
    }
    let expand = match query.get("expand").map(String::as_str) {
        None | Some("") => false,
        Some("notifications") => true,
        Some(_) => return Err(ApiError::bad("expand is notifications, or absent")),
    };
    let found = views::payment::find_payment(&api.backends, &source, &merchant, &reference).await?;
    if !found.exists() {
        return Err(ApiError::not_found("the ledger has no such payment"));
    }
    if expand {
        ok(&found.to_json_expanded(&api.config, &api.backends).await?)
    } else {
        ok(&found.to_json())
    }
}

async fn payments_by_order(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let order_id = query
        .get("order_id")
        .filter(|o| !o.is_empty())
        .ok_or_else(|| ApiError::bad("order_id is required"))?;
    if let Some(why) = views::payment::order_lookup_refused(&api.config.backend) {
        return Err(ApiError(StatusCode::CONFLICT, why.into()));
    }
    let found = views::payment::find_by_order(&api.backends, order_id).await?;
    ok(&json!({
        "order_id": order_id,
        "payments": found.iter().map(views::payment::Found::to_json).collect::<Vec<_>>(),
    }))
}

async fn search_payments(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let search = views::payment::search_of(&query).map_err(ApiError::bad)?;
    let page = api
        .backends
        .ledger
        .search_payments(&search)
        .await
        .map_err(anyhow::Error::from)?;
    ok(&views::payment::page_json(&page))
}

async fn notification(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match views::notification::value(&api.config, &api.backends, &id).await? {
        Some(v) => ok(&v),
        None => Err(ApiError::not_found("no archived notification with this id")),
    }
}

async fn dead_letters(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = limit(&query)?;
    let listed = views::dead_letters::read(&api.backends, limit).await?;
    let entries: Vec<Value> = listed.iter().map(views::dead_letters::summary).collect();
    ok(&json!(entries))
}

async fn dead_letter(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match views::dead_letters::show_value(&api.config, &api.backends, &id).await? {
        Some(v) => ok(&v),
        None => Err(ApiError::not_found("no such dead letter")),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveRequest {
    reason: Option<String>,
    id: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

async fn redrive(
    State(api): State<Api>,
    axum::Extension(Caller(key)): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let asked: RedriveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RedriveRequest::default()
    } else {
        parse(&body)?
    };
    let reason = asked.reason.as_deref();
    let result = match asked.id.as_deref() {
        Some(_) if reason.is_some() => {
            return Err(ApiError::bad("a redrive is by reason or by id, not both"))
        }
        Some(id) => redrive_one_action(&api, id, asked.dry_run).await?,
        None => redrive_action(&api, reason, asked.dry_run).await?,
    };
    audit(
        &api,
        &key,
        "dead-letters/redrive",
        &json!({ "reason": reason, "id": asked.id, "dry_run": asked.dry_run }),
        &result,
    )
    .await?;
    ok(&result)
}

/// Moves dead letters (all, or those with `reason`) back to the queue, or
/// with `dry_run` counts them by reason.
async fn redrive_action(api: &Api, reason: Option<&str>, dry_run: bool) -> Result<Value, ApiError> {
    Ok(if dry_run {
        let dead = views::dead_letters::read(&api.backends, views::dead_letters::MAX_SCAN).await?;
        let counts = views::dead_letters::by_reason(&dead, reason);
        json!({ "dry_run": true, "would_redrive": counts.values().sum::<u64>(), "by_reason": counts })
    } else {
        let moved = api
            .backends
            .dead_letters
            .redrive(reason)
            .await
            .map_err(anyhow::Error::from)?;
        views::dead_letters::redriven(&api.backends, moved as u64).await?
    })
}

/// Moves one dead letter (by its id or its notification's) back to the
/// queue, or with `dry_run` says it would.
async fn redrive_one_action(api: &Api, id: &str, dry_run: bool) -> Result<Value, ApiError> {
    views::dead_letters::redrive_one(&api.backends, id, dry_run)
        .await?
        .ok_or_else(|| ApiError::not_found("no such dead letter"))
}

async fn parked(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = limit(&query)?;
    let parked = api
        .backends
        .ledger
        .parked_before(OffsetDateTime::now_utc(), limit)
        .await
        .map_err(anyhow::Error::from)?;
    ok(&serde_json::to_value(&parked).map_err(anyhow::Error::from)?)
}

async fn endpoints(State(api): State<Api>) -> Result<Response, ApiError> {
    ok(&json!(
        views::deliveries::endpoints_value(&api.config, &api.backends).await?
    ))
}

async fn deliveries(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = limit(&query)?;
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(
            DeliveryStatus::parse(s)
                .ok_or_else(|| ApiError::bad("status is pending, delivered or dead_lettered"))?,
        ),
    };
    let store = views::deliveries::store_of(&api.backends)?;
    let filter = DeliveryFilter {
        endpoint: query.get("endpoint").cloned(),
        payment_key: query.get("payment").cloned(),
        event_id: None,
        status,
        since: None,
        limit,
    };
    if matches!(store, views::deliveries::Store::Line(_))
        && status.is_some_and(|s| s != DeliveryStatus::DeadLettered)
    {
        return Err(ApiError::bad(
            "on AWS only held (dead_lettered) deliveries are kept: pending ones are messages on \
             the webhook line (GET /api/v1/deliveries/endpoints gives its depth)",
        ));
    }
    let rows = store.list(&filter).await?;
    ok(&serde_json::to_value(&rows).map_err(anyhow::Error::from)?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendRequest {
    endpoint: String,
    event_id: String,
}

async fn resend(
    State(api): State<Api>,
    axum::Extension(Caller(key)): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let asked: ResendRequest = parse(&body)?;
    let result = resend_action(&api, &asked.endpoint, &asked.event_id).await?;
    audit(
        &api,
        &key,
        "deliveries/resend",
        &json!({ "endpoint": asked.endpoint, "event_id": asked.event_id }),
        &result,
    )
    .await?;
    ok(&result)
}

/// Sends a delivery again (a held one releases its payment's later events).
async fn resend_action(api: &Api, endpoint: &str, event_id: &str) -> Result<Value, ApiError> {
    if !api
        .config
        .deliveries
        .endpoints
        .iter()
        .any(|e| e.name == endpoint)
    {
        return Err(ApiError::not_found(format!(
            "no endpoint {endpoint:?} in the configuration"
        )));
    }
    Ok(
        match views::deliveries::resend_delivery(&api.backends, endpoint, event_id).await? {
            Resent::Again => json!({ "resent": "again" }),
            Resent::Released { payment_key } => {
                json!({ "resent": "released", "payment_key": payment_key })
            }
            Resent::NoSuchDelivery(why) => return Err(ApiError::not_found(why)),
        },
    )
}

async fn reconcile_latest(State(api): State<Api>) -> Result<Response, ApiError> {
    match crate::reconcile::record::latest(&api.backends).await? {
        Some((key, mut record)) => {
            record["key"] = json!(key);
            ok(&record)
        }
        None => Err(ApiError::not_found(
            "no reconcile report yet: paynotify reconcile keeps each run's",
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    payment_key: String,
    event_key: String,
    note: String,
}

impl ResolveRequest {
    /// What the audit record says was asked.
    fn asked(&self) -> Value {
        json!({ "payment_key": self.payment_key, "event_key": self.event_key, "note": self.note })
    }
}

/// What an operator does with a parked event: resolve it, or set it aside
/// as a dead letter.
#[derive(Debug, Clone, Copy)]
enum ParkedAction {
    Resolve,
    SetAside,
}

impl ParkedAction {
    /// Its name in the paths and the audit records.
    fn name(self) -> &'static str {
        match self {
            Self::Resolve => "resolve",
            Self::SetAside => "dead-letter",
        }
    }

    /// Does it, on behalf of `by`: the record.
    async fn act(self, api: &Api, asked: &ResolveRequest, by: &str) -> Result<Value, ApiError> {
        match self {
            Self::Resolve => resolve_action(api, asked, by).await,
            Self::SetAside => dead_letter_action(api, asked, by).await,
        }
    }
}

async fn resolve_parked(
    State(api): State<Api>,
    axum::Extension(Caller(key)): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    on_parked(&api, &key, &body, ParkedAction::Resolve).await
}

async fn dead_letter_parked(
    State(api): State<Api>,
    axum::Extension(Caller(key)): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    on_parked(&api, &key, &body, ParkedAction::SetAside).await
}

async fn on_parked(
    api: &Api,
    key: &Key,
    body: &[u8],
    action: ParkedAction,
) -> Result<Response, ApiError> {
    let asked: ResolveRequest = parse(body)?;
    let record = action
        .act(api, &asked, &format!("api:{}", key.name))
        .await?;
    let name = format!("parked/{}", action.name());
    audit(api, key, &name, &asked.asked(), &record).await?;
    ok(&record)
}

/// Sets a parked event aside as a dead letter with the operator's note.
async fn dead_letter_action(
    api: &Api,
    asked: &ResolveRequest,
    by: &str,
) -> Result<Value, ApiError> {
    if asked.note.trim().is_empty() {
        return Err(ApiError::bad("a note is needed: why it is set aside"));
    }
    match crate::parked::dead_letter(
        &api.backends,
        &asked.payment_key,
        &asked.event_key,
        &asked.note,
        by,
    )
    .await?
    {
        SetAside::Done(record) => Ok(record),
        SetAside::NotParked => Err(ApiError::not_found(
            "not parked there (applied meanwhile, or resolved before)",
        )),
        SetAside::NotReceived(id) => Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "notification {id} is not among the archive's received notifications (a status \
                 query's or a settlement file's event has none to redrive): resolve it instead"
            ),
        )),
    }
}

/// Takes a parked event out of the ledger with the operator's note.
async fn resolve_action(api: &Api, asked: &ResolveRequest, by: &str) -> Result<Value, ApiError> {
    if asked.note.trim().is_empty() {
        return Err(ApiError::bad("a note is needed: why it is resolved"));
    }
    crate::parked::resolve(
        &api.backends,
        &asked.payment_key,
        &asked.event_key,
        &asked.note,
        by,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("not parked there (applied meanwhile, or resolved before)"))
}

/// Records an action in the archive: who (the key's name and scope), what
/// was asked, what it did, and when. An action whose record cannot be
/// written answers 503 (it was done: the log says so).
async fn audit(
    api: &Api,
    key: &Key,
    action: &str,
    asked: &Value,
    result: &Value,
) -> Result<(), ApiError> {
    let now = OffsetDateTime::now_utc();
    let id = ulid::Ulid::new();
    let record = json!({
        "at": rfc3339_ms::format(now),
        "key": key.name,
        "scope": key.scope.as_str(),
        "action": action,
        "asked": asked,
        "result": result,
    });
    let path = format!("{AUDIT_PREFIX}date={}/{id}.json", now.date());
    tracing::info!(key = %key.name, action, result = %result, "read API action");
    api.backends
        .archive
        .put(&path, record.to_string().as_bytes())
        .await
        .map_err(|e| anyhow::anyhow!("recording the action under {path}: {e}"))?;
    Ok(())
}

/// Every route's path and method, for tests that call each.
pub fn route_list() -> Vec<(&'static str, &'static str)> {
    ROUTES.iter().map(|r| (r.method, r.path)).collect()
}
