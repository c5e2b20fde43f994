//! The operator's console (docs/console.md): server-rendered pages on the
//! read API's listener, under `/console/`. No script at all: the pages are
//! HTML and one stylesheet, compiled into the binary, served under a
//! content security policy that allows nothing else (`default-src 'none'`).
//!
//! Signing in takes an API key once: the console answers with a session
//! cookie (`HttpOnly`, `Secure`, `SameSite=Strict`, eight hours) that names
//! the key and is signed with it (HMAC-SHA256 under the key's digest), so
//! a process holding the same keys accepts it and removing the key ends
//! its sessions. Every action is a form carrying a token signed the same
//! way over the session, asks for a confirmation first, needs an `operate`
//! key, and is recorded in the archive under `audit/api/` as the API's are.
//! What notifications carry (an order id holding `<script>`, a 1 MB
//! field) is escaped by the templates and cut to a bounded length.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use maud::{html, Markup, DOCTYPE};
use paynotify_shared::config::ApiScope;
use paynotify_shared::ports::ParkedCounts;
use paynotify_shared::segment;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::keys::Key;
use super::oidc;
use super::{
    audit, redrive_action, redrive_one_action, resend_action, Api, ApiError, ParkedAction,
    ResolveRequest,
};
use crate::views;
use crate::views::payment::Found;

/// The session cookie's name.
pub const COOKIE: &str = "paynotify_console";
/// How long a session lasts.
const SESSION_SECS: i64 = 8 * 3600;
/// The longest text a page shows of any one value from a notification or
/// a store (longer is cut, with an ellipsis).
pub const MAX_SHOWN: usize = 200;
/// The content security policy of every page: nothing but this origin's
/// stylesheet, no script, no frames, forms only to this origin.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const STYLESHEET: &str = include_str!("console.css");

/// The console's routes; the API's router adds them beside its own.
pub(super) fn router(api: Api) -> Router<Api> {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/payments", get(payments))
        .route("/console/search", get(search))
        .route("/console/notifications/{id}", get(notification))
        .route("/console/dead-letters", get(dead_letters))
        .route("/console/dead-letters/{id}", get(dead_letter))
        .route("/console/dead-letters/redrive", post(redrive))
        .route("/console/parked", get(parked))
        .route("/console/parked/resolve", post(resolve))
        .route("/console/parked/dead-letter", post(set_aside))
        .route("/console/deliveries", get(deliveries))
        .route("/console/deliveries/resend", post(resend))
        .route("/console/reconcile", get(reconcile))
        .route("/console/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(api, signed_in))
        .route("/console/login", get(login_page).post(login))
        .route("/console/console.css", get(stylesheet))
}

/// Who is signed in, for the handlers.
#[derive(Clone)]
struct Session {
    key: Key,
    /// The cookie's value, which the form tokens are signed over.
    cookie: String,
    /// Signed in by the load balancer (which signs out too).
    via_alb: bool,
}

impl Session {
    /// The token a form of this session carries.
    fn token(&self) -> String {
        b64(&self.key.sign(format!("form|{}", self.cookie).as_bytes()))
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// `NAME.EXPIRY.TAG`: the key's name (base64url), the session's end (Unix
/// seconds) and their signature under the key.
fn session_cookie(key: &Key, now: OffsetDateTime) -> String {
    let until = now.unix_timestamp() + SESSION_SECS;
    let name = b64(key.name.as_bytes());
    let tag = key.sign(format!("session|{name}|{until}").as_bytes());
    format!("{name}.{until}.{}", b64(&tag))
}

/// The session `value` names, if it is signed by a configured key and not
/// over.
fn session_of(api: &Api, value: &str, now: OffsetDateTime) -> Option<Session> {
    let mut parts = value.split('.');
    let (name, until, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let key_name = String::from_utf8(unb64(name)?).ok()?;
    let key = api.keys.named(&key_name)?;
    let ok = key.verify(format!("session|{name}|{until}").as_bytes(), &unb64(tag)?);
    let live = until.parse::<i64>().ok()? > now.unix_timestamp();
    (ok && live).then(|| Session {
        key: key.clone(),
        cookie: value.to_owned(),
        via_alb: false,
    })
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Every page but the sign-in page and the stylesheet: a live session, or
/// to the sign-in page.
///
/// Behind a load balancer's OIDC sign-in (`api.oidc`), the user its
/// verified `x-amzn-oidc-data` names is signed in instead; a header that
/// does not verify is 401, never a fall-back to a cookie.
async fn signed_in(State(api): State<Api>, mut request: Request, next: Next) -> Response {
    let now = OffsetDateTime::now_utc();
    if let (Some(alb), Some(token)) = (&api.oidc, request.headers().get(oidc::HEADER)) {
        return match alb_session(alb, token, now).await {
            Ok(s) => {
                request.extensions_mut().insert(s);
                next.run(request).await
            }
            Err(e) => e.into_response(),
        };
    }
    let session = cookie_value(request.headers(), COOKIE).and_then(|v| session_of(&api, v, now));
    match session {
        Some(s) => {
            request.extensions_mut().insert(s);
            next.run(request).await
        }
        None => see_other("/console/login"),
    }
}

/// The session of the user a load balancer's token names.
async fn alb_session(
    alb: &oidc::AlbOidc,
    token: &HeaderValue,
    now: OffsetDateTime,
) -> Result<Session, PageError> {
    let token = token.to_str().map_err(|_| {
        PageError(
            StatusCode::UNAUTHORIZED,
            "The load balancer's sign-in token is not valid.".into(),
            None,
        )
    })?;
    let identity = alb.verify(token, now).await.map_err(|e| {
        tracing::warn!(error = %e, "console: a load balancer's sign-in was refused");
        match e {
            oidc::OidcError::Invalid(_) => PageError(
                StatusCode::UNAUTHORIZED,
                "The load balancer's sign-in could not be verified. Sign in again.".into(),
                None,
            ),
            oidc::OidcError::KeyServer(_) => PageError(
                StatusCode::SERVICE_UNAVAILABLE,
                "The sign-in could not be checked just now; try again.".into(),
                None,
            ),
        }
    })?;
    let Some(scope) = identity.scope else {
        return Err(PageError(
            StatusCode::FORBIDDEN,
            format!(
                "{} is signed in, but is not one of the console's users.",
                identity.user
            ),
            None,
        ));
    };
    let name = format!("oidc:{}", identity.user);
    Ok(Session {
        // Form tokens are bound to the user, signed with the form secret
        // every process behind the load balancer shares.
        cookie: format!("oidc|{}", identity.user),
        key: alb.form_key(&name, scope),
        via_alb: true,
    })
}

fn see_other(to: &'static str) -> Response {
    secured(
        StatusCode::SEE_OTHER,
        html! {},
        &[(header::LOCATION, HeaderValue::from_static(to))],
    )
}

/// A page with the console's headers: no cache, no sniffing, no framing,
/// no referrer to other sites, and [`CSP`].
fn secured(
    status: StatusCode,
    body: Markup,
    extra: &[(header::HeaderName, HeaderValue)],
) -> Response {
    let mut r = (status, body.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    for (name, value) in extra {
        h.append(name.clone(), value.clone());
    }
    r
}

/// A page that is not what was asked for: its status and words.
struct PageError(StatusCode, String, Option<Box<Session>>);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e.0, e.1, None)
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = match self.0 {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST => "Not valid",
            _ => "Try again",
        };
        let body = page(
            title,
            self.2.as_deref(),
            html! { p.error role="alert" { (clip(&self.1)) } },
        );
        secured(self.0, body, &[])
    }
}

type Page = Result<Response, PageError>;

fn ok(title: &str, session: &Session, body: Markup) -> Page {
    Ok(secured(
        StatusCode::OK,
        page(title, Some(session), body),
        &[],
    ))
}

/// `text`, cut to [`MAX_SHOWN`] characters.
pub fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_SHOWN {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX_SHOWN).collect();
        cut.push('…');
        cut
    }
}

/// Text that may be absent as a page shows it: cut, or a dash.
fn or_dash(text: Option<&str>) -> String {
    text.map_or_else(|| "–".into(), clip)
}

/// The longest raw text (a body, a JSON document) a page shows, in
/// characters; the rest is left out.
const MAX_RAW_SHOWN: usize = 64 * 1024;

/// A JSON value as a page shows it: text as itself, null as a dash.
fn shown(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => clip(s),
        other => clip(&other.to_string()),
    }
}

fn page(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · paynotify" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                a.skip href="#main" { "Skip to the content" }
                header {
                    @if let Some(s) = session {
                        nav aria-label="Console" {
                            a href="/console/" { "Overview" }
                            a href="/console/payments" { "Payments" }
                            a href="/console/search" { "Search" }
                            a href="/console/dead-letters" { "Dead letters" }
                            a href="/console/parked" { "Parked" }
                            a href="/console/deliveries" { "Deliveries" }
                            a href="/console/reconcile" { "Reconcile" }
                        }
                        @if s.via_alb {
                            div.who { span { (s.key.name) " · " (s.key.scope.as_str()) } }
                        } @else {
                            form.who method="post" action="/console/logout" {
                                span { (s.key.name) " · " (s.key.scope.as_str()) }
                                input type="hidden" name="token" value=(s.token());
                                button type="submit" { "Sign out" }
                            }
                        }
                    } @else {
                        span.brand { "paynotify" }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

async fn stylesheet() -> Response {
    let mut r = STYLESHEET.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    r
}

fn login_form(error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form.login method="post" action="/console/login" {
            label for="key" { "API key" }
            input id="key" name="key" type="password" autocomplete="current-password" required autofocus;
            button type="submit" { "Sign in" }
        }
        p.note { "A read key sees everything; an operate key also redrives, resends and resolves. Keys are configured under [[api.keys]] (docs/api.md)." }
    }
}

async fn login_page() -> Response {
    secured(StatusCode::OK, page("Sign in", None, login_form(None)), &[])
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
}

/// Whether a request's `Origin`, when it names one, is the host it was
/// sent to: a form posted from another site is not (a sign-in there would
/// put the browser in someone else's session).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    origin_host.is_some() && origin_host == host
}

async fn login(
    State(api): State<Api>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return secured(
            StatusCode::FORBIDDEN,
            page(
                "Sign in",
                None,
                login_form(Some("Sign in from this console's own page.")),
            ),
            &[],
        );
    }
    let Some(key) = api.keys.find(form.key.trim().as_bytes()) else {
        tracing::warn!("console: a sign-in with a key that is not configured");
        return secured(
            StatusCode::UNAUTHORIZED,
            page(
                "Sign in",
                None,
                login_form(Some("Not a key of this console.")),
            ),
            &[],
        );
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/console; Max-Age={SESSION_SECS}; HttpOnly; Secure; SameSite=Strict",
        session_cookie(key, OffsetDateTime::now_utc())
    );
    secured(
        StatusCode::SEE_OTHER,
        html! {},
        &[
            (header::LOCATION, HeaderValue::from_static("/console/")),
            (
                header::SET_COOKIE,
                HeaderValue::from_str(&cookie).expect("a cookie of base64url and digits"),
            ),
        ],
    )
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    token: String,
}

async fn logout(
    axum::Extension(session): axum::Extension<Session>,
    Form(form): Form<TokenForm>,
) -> Page {
    check_token(&session, &form.token)?;
    let gone = format!("{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; Secure; SameSite=Strict");
    Ok(secured(
        StatusCode::SEE_OTHER,
        html! {},
        &[
            (header::LOCATION, HeaderValue::from_static("/console/login")),
            (
                header::SET_COOKIE,
                HeaderValue::from_str(&gone).expect("a plain cookie"),
            ),
        ],
    ))
}

/// A form's token must be its session's.
fn check_token(session: &Session, token: &str) -> Result<(), PageError> {
    let data = format!("form|{}", session.cookie);
    match unb64(token) {
        Some(tag) if session.key.verify(data.as_bytes(), &tag) => Ok(()),
        _ => Err(PageError(
            StatusCode::FORBIDDEN,
            "This form is not one the console gave this session (its token does not match). \
             Open the page again and repeat."
                .into(),
            Some(Box::new(session.clone())),
        )),
    }
}

/// An action: its session's token, and an `operate` key.
fn may_act(session: &Session, token: &str) -> Result<(), PageError> {
    check_token(session, token)?;
    if session.key.scope < ApiScope::Operate {
        return Err(PageError(
            StatusCode::FORBIDDEN,
            format!(
                "Key {:?} may only read; this needs an operate key.",
                session.key.name
            ),
            Some(Box::new(session.clone())),
        ));
    }
    Ok(())
}

/// The hidden fields every action form carries.
fn hidden(session: &Session, fields: &[(&str, &str)]) -> Markup {
    html! {
        input type="hidden" name="token" value=(session.token());
        @for (name, value) in fields { input type="hidden" name=(name) value=(value); }
    }
}

/// The confirmation an action asks for before it is done: what it will
/// do, and the same form again with `confirm`.
fn confirmation(
    session: &Session,
    action: &str,
    what: Markup,
    fields: &[(&str, &str)],
    label: &str,
) -> Page {
    ok(
        "Confirm",
        session,
        html! {
            div.confirm role="alertdialog" aria-labelledby="confirm-what" {
                div id="confirm-what" { (what) }
                form method="post" action=(action) {
                    (hidden(session, fields))
                    input type="hidden" name="confirm" value="yes";
                    button.danger type="submit" autofocus { (label) }
                }
                p { a href="/console/" { "Cancel" } }
            }
        },
    )
}

fn table(headers: &[&str], rows: Vec<Markup>) -> Markup {
    html! {
        div.scroll {
            table {
                thead { tr { @for h in headers { th scope="col" { (h) } } } }
                tbody { @for r in rows { (r) } }
            }
        }
    }
}

// ---- pages ---------------------------------------------------------------

async fn home(State(api): State<Api>, axum::Extension(session): axum::Extension<Session>) -> Page {
    let now = OffsetDateTime::now_utc();
    let stats = api
        .backends
        .queue
        .stats()
        .await
        .map_err(anyhow::Error::from)?;
    let parked = api
        .backends
        .ledger
        .parked_before(now, 1000)
        .await
        .map_err(anyhow::Error::from)?;
    let counts = ParkedCounts::of(&parked, now, api.config.worker.parked_alert_secs);
    let received = received_last_hour(&api, now).await?;
    let applied = api
        .backends
        .ledger
        .recorded_since(now - time::Duration::hours(1))
        .await
        .map_err(anyhow::Error::from)?;
    // A backend that keeps no deliveries has no endpoints to fail; a store
    // that fails to answer is an error, not zero.
    let endpoints = if views::deliveries::store_of(&api.backends).is_ok() {
        views::deliveries::endpoints_value(&api.config, &api.backends).await?
    } else {
        Vec::new()
    };
    let failing: Vec<&Value> = endpoints
        .iter()
        .filter(|e| {
            e["dead_lettered"].as_u64().unwrap_or(0) > 0
                || !e["failing_since"].is_null()
                || !e["disabled"].is_null()
        })
        .collect();
    let last = crate::reconcile::record::latest(&api.backends).await?;
    let total: u64 = received.iter().sum();
    ok(
        "Overview",
        &session,
        html! {
            section aria-labelledby="h-recv" {
                h2 id="h-recv" { "Received in the last hour: " (total) }
                (chart(&received))
                p.note { "Notifications archived, by five minutes, oldest on the left." }
            }
            section.tiles aria-label="Now" {
                @match applied {
                    Some(n) => div.tile { span.n { (n) } span { "applied in the last hour" } },
                    None => div.tile title="The DynamoDB ledger keeps no index by time: the dashboard's queue graph shows the messages settled." { span.n { "–" } span { "applied in the last hour (see the dashboard)" } },
                }
                div.tile { span.n { (stats.visible) } span { "waiting in the queue" } }
                div.tile { span.n { (stats.in_flight) } span { "being applied" } }
                div.tile { span.n { (stats.oldest_age.map(|a| format!("{} s", a.as_secs())).unwrap_or_else(|| "–".into())) } span { "oldest waiting" } }
                div.tile.warn[stats.dead_letters > 0] { span.n { (stats.dead_letters) } a href="/console/dead-letters" { "dead letters" } }
                div.tile.warn[counts.overdue > 0 || counts.conflicted > 0] { span.n { (parked.len()) } a href="/console/parked" { "parked (" (counts.overdue) " overdue, " (counts.conflicted) " conflicted)" } }
                div.tile.warn[!failing.is_empty()] { span.n { (failing.len()) } a href="/console/deliveries" { "endpoints failing" } }
            }
            section aria-labelledby="h-rec" {
                h2 id="h-rec" { "Last reconcile" }
                @match &last {
                    Some((_, r)) => p { (shown(&r["at"])) ": " @if r["clean"].as_bool() == Some(true) { "clean" } @else { strong { "discrepancies" } } " · " a href="/console/reconcile" { "the report" } },
                    None => p { "None yet: paynotify reconcile keeps each run's report." },
                }
            }
        },
    )
}

/// Notifications archived in each of the last twelve five-minute spans,
/// read from the archive's keys (a segment's key names its first
/// notification's ULID and how many it holds).
async fn received_last_hour(api: &Api, now: OffsetDateTime) -> Result<[u64; 12], PageError> {
    let from = now - time::Duration::hours(1);
    let keys = api
        .backends
        .archive
        .list("raw/", Some(from), Some(now))
        .await
        .map_err(anyhow::Error::from)?;
    let mut buckets = [0u64; 12];
    for key in keys {
        let Some(Ok(ulid)) = segment::first_id(&key).map(ulid::Ulid::from_string) else {
            continue;
        };
        let n = segment::segment_len(&key).unwrap_or(1) as u64;
        let at =
            OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ulid.timestamp_ms() as i64);
        let ago = (now - at).whole_seconds();
        if (0..3600).contains(&ago) {
            buckets[11 - (ago / 300) as usize] += n;
        }
    }
    Ok(buckets)
}

/// A bar chart as SVG (no script), with the counts as text for a reader.
fn chart(buckets: &[u64; 12]) -> Markup {
    let top = buckets.iter().copied().max().unwrap_or(0).max(1);
    let described: Vec<String> = buckets
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}–{} min ago: {n}", 60 - i * 5, 55 - i * 5))
        .collect();
    html! {
        svg.chart viewBox="0 0 240 60" role="img" aria-label=(described.join("; ")) {
            @for (i, n) in buckets.iter().enumerate() {
                @let h = (*n as f64 / top as f64 * 56.0).max(if *n > 0 { 1.0 } else { 0.0 });
                rect x=(i * 20 + 2) y=(format!("{:.1}", 58.0 - h)) width="16" height=(format!("{h:.1}")) {
                    title { (described[i]) }
                }
            }
            line x1="0" y1="58.5" x2="240" y2="58.5";
        }
    }
}

#[derive(Deserialize, Default)]
struct PaymentQuery {
    order_id: Option<String>,
    source: Option<String>,
    merchant: Option<String>,
    reference: Option<String>,
}

async fn payments(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
    Query(q): Query<PaymentQuery>,
) -> Page {
    let given = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let order = given(&q.order_id);
    let (source, merchant, reference) = (given(&q.source), given(&q.merchant), given(&q.reference));
    let (asked, found): (Option<String>, Vec<Found>) =
        match (&order, &source, &merchant, &reference) {
            (Some(o), ..) => {
                if let Some(why) = views::payment::order_lookup_refused(&api.config.backend) {
                    return Err(PageError(
                        StatusCode::CONFLICT,
                        why.into(),
                        Some(Box::new(session)),
                    ));
                }
                (
                    Some(format!("order {o}")),
                    views::payment::find_by_order(&api.backends, o).await?,
                )
            }
            (None, Some(s), Some(m), Some(r)) => {
                let f = views::payment::find_payment(&api.backends, s, m, r).await?;
                (
                    Some(format!("{s} {m} {r}")),
                    if f.exists() { vec![f] } else { Vec::new() },
                )
            }
            _ => (None, Vec::new()),
        };
    let mut deliveries = Vec::with_capacity(found.len());
    for f in &found {
        deliveries.push(deliveries_of(&api, f.key.as_str()).await?);
    }
    let sources: Vec<&String> = api.config.sources.keys().collect();
    ok(
        "Payments",
        &session,
        html! {
            form.search method="get" action="/console/payments" role="search" {
                fieldset {
                    legend { "By the merchant's order id" }
                    label for="order_id" { "Order id" }
                    input id="order_id" name="order_id" value=(order.clone().unwrap_or_default()) autofocus;
                    button type="submit" { "Find" }
                }
                fieldset {
                    legend { "Or by the PSP's id" }
                    label for="source" { "Source" }
                    select id="source" name="source" {
                        @for s in &sources { option selected[source.as_deref() == Some(s.as_str())] { (s) } }
                    }
                    label for="merchant" { "Merchant" }
                    input id="merchant" name="merchant" value=(merchant.clone().unwrap_or_default());
                    label for="reference" { "Payment id (UnionPay queryId)" }
                    input id="reference" name="reference" value=(reference.clone().unwrap_or_default());
                    button type="submit" { "Find" }
                }
            }
            @if let Some(asked) = &asked {
                @if found.is_empty() {
                    p.empty role="status" { "No payment for " (clip(asked)) "." }
                } @else {
                    p role="status" { (found.len()) " payment" @if found.len() > 1 { "s" } " for " (clip(asked)) }
                }
            }
            @for (f, d) in found.iter().zip(&deliveries) { (payment_card(f, d.as_deref())) }
        },
    )
}

async fn search(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let asked = q.values().any(|v| !v.trim().is_empty());
    let search = views::payment::search_of(&q).map_err(|why| {
        PageError(
            StatusCode::BAD_REQUEST,
            why,
            Some(Box::new(session.clone())),
        )
    })?;
    let page = if asked {
        Some(
            api.backends
                .ledger
                .search_payments(&paynotify_shared::ports::PaymentSearch {
                    limit: search.limit.min(50),
                    ..search
                })
                .await
                .map_err(anyhow::Error::from)?,
        )
    } else {
        None
    };
    let field = |name: &str| q.get(name).cloned().unwrap_or_default();
    let statuses = [
        "AUTHORIZED",
        "PAID",
        "FAILED",
        "PARTIALLY_REFUNDED",
        "REFUNDED",
        "VOIDED",
    ];
    let next_link = page.as_ref().and_then(|p| p.next.as_ref()).map(|c| {
        let mut params: Vec<(String, String)> = q
            .iter()
            .filter(|(k, v)| k.as_str() != "cursor" && !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        params.push(("cursor".into(), c.encode()));
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", form_escape(v)))
            .collect();
        format!("/console/search?{}", query.join("&"))
    });
    ok(
        "Search",
        &session,
        html! {
            form.search method="get" action="/console/search" role="search" {
                fieldset {
                    legend { "Payments by source, merchant, status and last change" }
                    label for="source" { "Source" }
                    select id="source" name="source" {
                        option value="" { "any" }
                        @for s in api.config.sources.keys() { option selected[field("source") == *s] { (s) } }
                    }
                    label for="merchant" { "Merchant" }
                    input id="merchant" name="merchant" value=(field("merchant"));
                    label for="status" { "Status" }
                    select id="status" name="status" {
                        option value="" { "any" }
                        @for s in statuses { option selected[field("status") == s] { (s) } }
                    }
                    label for="from" { "Changed from" }
                    input id="from" name="from" placeholder="2026-12-06T00:00:00Z" value=(field("from"));
                    label for="to" { "to" }
                    input id="to" name="to" placeholder="2026-12-07T00:00:00Z" value=(field("to"));
                    button type="submit" { "Search" }
                }
            }
            @if let Some(page) = &page {
                @if page.payments.is_empty() { p.empty role="status" { "No payment on this page." } }
                (table(&["payment", "order", "status", "paid", "refunded", "last change"], page.payments.iter().map(|p| {
                    let (source, merchant, reference) = p.state.payment_key.parts();
                    let c = p.state.currency;
                    html! {
                        tr {
                            td { a href=(format!("/console/payments?source={}&merchant={}&reference={}", form_escape(source), form_escape(merchant), form_escape(reference))) { code { (clip(p.state.payment_key.as_str())) } } }
                            td { (or_dash(p.order_id.as_deref())) }
                            td { (p.state.status.as_str()) }
                            td { (c.decimal(p.state.paid_minor)) " " (c.as_str()) }
                            td { (c.decimal(p.state.refunded_minor)) " " (c.as_str()) }
                            td { (views::payment::time(p.updated_at)) }
                        }
                    }
                }).collect()))
                @if let Some(next) = &next_link { p { a rel="next" href=(next) { "Next page" } } }
            }
        },
    )
}

/// `text` as a query parameter's value (percent-encoded but for
/// unreserved characters).
fn form_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The deliveries of a payment's events (on AWS, the held ones: the
/// others are messages on the webhook line); `None` when this backend
/// keeps none.
async fn deliveries_of(
    api: &Api,
    payment_key: &str,
) -> Result<Option<Vec<paynotify_shared::ports::Delivery>>, PageError> {
    let Ok(store) = views::deliveries::store_of(&api.backends) else {
        return Ok(None);
    };
    let held_only = matches!(store, views::deliveries::Store::Line(_));
    let rows = store
        .list(&paynotify_shared::ports::DeliveryFilter {
            payment_key: Some(payment_key.to_owned()),
            status: held_only.then_some(paynotify_shared::ports::DeliveryStatus::DeadLettered),
            limit: 100,
            ..Default::default()
        })
        .await?;
    Ok(Some(rows))
}

/// One payment: its state, its order, its timeline and its deliveries.
fn payment_card(f: &Found, deliveries: Option<&[paynotify_shared::ports::Delivery]>) -> Markup {
    let v = f.to_json();
    let state = &v["state"];
    html! {
        article.payment {
            h2 { "Payment " code { (clip(f.key.as_str())) } }
            dl {
                dt { "Order" } dd.order { (shown(&v["order_id"])) }
                dt { "Status" } dd.status { (shown(&state["status"])) }
                dt { "Paid" } dd { (shown(&state["paid"])) " " (shown(&state["currency"])) }
                dt { "Refunded" } dd { (shown(&state["refunded"])) " " (shown(&state["currency"])) }
                dt { "Version" } dd { (shown(&state["version"])) }
            }
            h3 { "Timeline" }
            ol.timeline {
                @for (e, ev) in v["history"].as_array().into_iter().flatten().zip(&f.history) {
                    li {
                        time { (shown(&e["recorded_at"])) }
                        " " strong { (shown(&e["kind"])) " " (shown(&e["outcome"])) }
                        " " (shown(&e["amount"])) " " (clip(&ev.currency))
                        " → " (e["status_after"].as_str().map(clip).unwrap_or_else(|| "unchanged".into()))
                        br;
                        span.meta {
                            "notification " a href=(format!("/console/notifications/{}", e["notification_id"].as_str().unwrap_or_default())) { code { (shown(&e["notification_id"])) } }
                            @if let Some(ev) = &ev.event {
                                @if let Some(code) = &ev.result_code { " · code " (clip(code)) }
                                @if let Some(t) = &ev.psp_txn_id { " · PSP id " (clip(t)) }
                            }
                        }
                    }
                }
            }
            @if !f.parked.is_empty() {
                h3 { "Parked" }
                ul { @for p in &f.parked { li { (p.event.kind.as_str()) " " (p.event.amount.to_string()) " since " (views::payment::time(p.parked_at)) @if let Some(c) = &p.conflict { " · " (clip(c)) } } } }
            }
            @if let Some(deliveries) = deliveries {
                h3 { "Deliveries" }
                @if deliveries.is_empty() { p.empty { "None held or pending." } }
                @else {
                    (table(&["endpoint", "event", "status", "attempts", "last error"], deliveries.iter().map(|d| html! {
                        tr.delivery {
                            td { (clip(&d.endpoint)) }
                            td { (d.record.event_type.as_str()) }
                            td { (d.status.as_str()) }
                            td { (d.attempts) }
                            td { (or_dash(d.last_error.as_deref())) }
                        }
                    }).collect()))
                }
            }
        }
    }
}

async fn notification(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
    Path(id): Path<String>,
) -> Page {
    let Some(v) = views::notification::value(&api.config, &api.backends, &id).await? else {
        return Err(PageError(
            StatusCode::NOT_FOUND,
            "No archived notification with this id.".into(),
            Some(Box::new(session)),
        ));
    };
    let verdict = &v["verification"];
    let body = match (v["body"].as_str(), v["body_b64"].as_str()) {
        (Some(text), _) => text.to_owned(),
        (None, Some(b64)) => format!("(not UTF-8; base64) {b64}"),
        _ => String::new(),
    };
    let shown_body: String = body.chars().take(MAX_RAW_SHOWN).collect();
    let empty = Vec::new();
    ok(
        "Notification",
        &session,
        html! {
            dl {
                dt { "Id" } dd { code { (shown(&v["notification_id"])) } }
                dt { "Source" } dd { (shown(&v["source"])) }
                dt { "Received" } dd { (shown(&v["received_at"])) " from " (shown(&v["remote_addr"])) }
                dt { "Archived at" } dd { code { (shown(&v["archive_key"])) } }
                dt { "Verified now" } dd.verdict {
                    @if verdict["valid"].as_bool() == Some(true) { strong.clean { "valid" } }
                    @else { strong.bad { "fails" } " at " (shown(&verdict["step"])) ": " (shown(&verdict["message"])) }
                }
            }
            h2 { "Headers" }
            (table(&["name", "value"], v["headers"].as_array().unwrap_or(&empty).iter().map(|h| html! {
                tr { td { (shown(&h[0])) } td { (shown(&h[1])) } }
            }).collect()))
            h2 { "Body (card numbers masked)" }
            pre.raw { (shown_body) }
        },
    )
}

async fn dead_letters(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
) -> Page {
    let listed = views::dead_letters::read(&api.backends, 1000).await?;
    let mut by_reason: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for d in &listed {
        by_reason
            .entry(d.reason.clone())
            .or_default()
            .push(views::dead_letters::summary(d));
    }
    let operate = session.key.scope >= ApiScope::Operate;
    ok(
        "Dead letters",
        &session,
        html! {
            @if by_reason.is_empty() { p.empty { "No dead letters." } }
            @for (reason, items) in &by_reason {
                section.reason {
                    h2 { code { (clip(reason)) } " · " (items.len()) }
                    @if operate {
                        form method="post" action="/console/dead-letters/redrive" {
                            (hidden(&session, &[("reason", reason)]))
                            button type="submit" { "Redrive these " (items.len()) }
                        }
                    }
                    (table(&["dead since", "notification", "error", "receives", ""], items.iter().map(|d| html! {
                        tr {
                            td { (shown(&d["dead_at"])) }
                            td { a href=(format!("/console/dead-letters/{}", d["id"].as_str().unwrap_or_default())) { code { (shown(&d["notification_id"])) } } }
                            td { (shown(&d["error"])) }
                            td { (shown(&d["receive_count"])) }
                            td {
                                @if operate {
                                    form.inline method="post" action="/console/dead-letters/redrive" {
                                        (hidden(&session, &[("id", d["id"].as_str().unwrap_or_default())]))
                                        button type="submit" { "Redrive" }
                                    }
                                }
                            }
                        }
                    }).collect()))
                }
            }
        },
    )
}

async fn dead_letter(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
    Path(id): Path<String>,
) -> Page {
    let Some(v) = views::dead_letters::show_value(&api.config, &api.backends, &id).await? else {
        return Err(PageError(
            StatusCode::NOT_FOUND,
            "No such dead letter.".into(),
            Some(Box::new(session)),
        ));
    };
    let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
    let shown_json: String = pretty.chars().take(MAX_RAW_SHOWN).collect();
    ok(
        "Dead letter",
        &session,
        html! {
            dl {
                dt { "Reason" } dd { (shown(&v["reason"])) }
                dt { "Error" } dd { (shown(&v["error"])) }
                dt { "Failing step" } dd { (shown(&v["verification"]["step"])) }
            }
            h2 { "As `dlq show --json` gives it (card numbers masked)" }
            pre.raw { (shown_json) }
        },
    )
}

#[derive(Deserialize)]
struct RedriveForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    reason: String,
    /// One dead letter, instead of a reason's.
    #[serde(default)]
    id: String,
    #[serde(default)]
    confirm: String,
}

async fn redrive(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
    Form(form): Form<RedriveForm>,
) -> Page {
    may_act(&session, &form.token)?;
    let one = !form.id.is_empty();
    if form.confirm != "yes" {
        if one {
            redrive_one_action(&api, &form.id, true).await?;
            return confirmation(
                &session,
                "/console/dead-letters/redrive",
                html! { p { "Send the dead letter " code { (clip(&form.id)) } " back to the queue? If it was applied meanwhile it is a duplicate and changes nothing." } },
                &[("id", &form.id)],
                "Redrive it",
            );
        }
        let counted = redrive_action(&api, Some(&form.reason), true).await?;
        return confirmation(
            &session,
            "/console/dead-letters/redrive",
            html! { p { "Send " strong { (shown(&counted["would_redrive"])) } " dead letters with reason " code { (clip(&form.reason)) } " back to the queue? What was applied meanwhile is a duplicate and changes nothing." } },
            &[("reason", &form.reason)],
            "Redrive them",
        );
    }
    let (result, asked) = if one {
        (
            redrive_one_action(&api, &form.id, false).await?,
            json!({ "id": form.id }),
        )
    } else {
        (
            redrive_action(&api, Some(&form.reason), false).await?,
            json!({ "reason": form.reason }),
        )
    };
    audit(
        &api,
        &session.key,
        "console/dead-letters/redrive",
        &asked,
        &result,
    )
    .await?;
    ok(
        "Redriven",
        &session,
        html! { p role="status" { (shown(&result["redriven"])) " sent back to the queue; " (shown(&result["still_in_dlq"])) " still dead-lettered." } p { a href="/console/dead-letters" { "Dead letters" } } },
    )
}

async fn parked(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
) -> Page {
    let now = OffsetDateTime::now_utc();
    let parked = api
        .backends
        .ledger
        .parked_before(now, 1000)
        .await
        .map_err(anyhow::Error::from)?;
    let operate = session.key.scope >= ApiScope::Operate;
    ok(
        "Parked events",
        &session,
        html! {
            p.note { "Events waiting for their payment, oldest first; a conflicted one contradicts the payment that arrived. Resolving takes one out of the ledger with your note (recorded in the archive); setting it aside makes its notification a dead letter instead, for a redrive once its payment can take it." }
            @if parked.is_empty() { p.empty { "Nothing is parked." } }
            (table(&["parked since", "payment", "event", "amount", "conflict", ""], parked.iter().map(|p| html! {
                tr {
                    td { (views::payment::time(p.parked.parked_at)) }
                    td { code { (clip(p.payment_key.as_str())) } }
                    td { (p.parked.event.kind.as_str()) " " (p.parked.event.outcome.as_str()) br; code.small { (clip(p.parked.event.event_key.as_str())) } }
                    td { (p.parked.event.amount.to_string()) }
                    td { (or_dash(p.parked.conflict.as_deref())) }
                    td {
                        @if operate {
                            form.inline method="post" action="/console/parked/resolve" {
                                (hidden(&session, &[("payment_key", p.payment_key.as_str()), ("event_key", p.parked.event.event_key.as_str())]))
                                label { "Note " input name="note" required maxlength="500"; }
                                button type="submit" { "Resolve" }
                                " "
                                button type="submit" formaction="/console/parked/dead-letter" { "Set aside" }
                            }
                        }
                    }
                }
            }).collect()))
        },
    )
}

#[derive(Deserialize)]
struct ResolveForm {
    #[serde(default)]
    token: String,
    payment_key: String,
    event_key: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    confirm: String,
}

async fn resolve(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
    Form(form): Form<ResolveForm>,
) -> Page {
    on_parked(&api, session, form, ParkedAction::Resolve).await
}

async fn set_aside(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
    Form(form): Form<ResolveForm>,
) -> Page {
    on_parked(&api, session, form, ParkedAction::SetAside).await
}

/// Resolves a parked event or sets it aside: the token, an `operate`
/// scope, a note and a confirmation first.
async fn on_parked(api: &Api, session: Session, form: ResolveForm, action: ParkedAction) -> Page {
    may_act(&session, &form.token)?;
    if form.note.trim().is_empty() {
        return Err(PageError(
            StatusCode::BAD_REQUEST,
            "A note is needed: why.".into(),
            Some(Box::new(session)),
        ));
    }
    let event = html! { code { (clip(&form.event_key)) } };
    let payment = html! { code { (clip(&form.payment_key)) } };
    if form.confirm != "yes" {
        let (question, label) = match action {
            ParkedAction::Resolve => (
                html! { p { "Take the parked event " (event) " of " (payment) " out of the ledger, with the note " q { (clip(&form.note)) } "? A payment that arrives later is applied without it." } },
                "Resolve it",
            ),
            ParkedAction::SetAside => (
                html! { p { "Set the parked event " (event) " of " (payment) " aside, with the note " q { (clip(&form.note)) } "? Its notification becomes a dead letter (reason set_aside) and the event leaves the ledger; redrive it once its payment can take it." } },
                "Set it aside",
            ),
        };
        return confirmation(
            &session,
            &format!("/console/parked/{}", action.name()),
            question,
            &[
                ("payment_key", &form.payment_key),
                ("event_key", &form.event_key),
                ("note", &form.note),
            ],
            label,
        );
    }
    let asked = ResolveRequest {
        payment_key: form.payment_key.clone(),
        event_key: form.event_key.clone(),
        note: form.note.clone(),
    };
    let record = action
        .act(api, &asked, &format!("console:{}", session.key.name))
        .await?;
    let name = format!("console/parked/{}", action.name());
    audit(api, &session.key, &name, &asked.asked(), &record).await?;
    let (title, done) = match action {
        ParkedAction::Resolve => (
            "Resolved",
            html! { "Resolved: " (event) " is no longer parked." },
        ),
        ParkedAction::SetAside => (
            "Set aside",
            html! { "Set aside: " (event) " is a dead letter (reason set_aside), no longer parked. " a href="/console/dead-letters" { "Dead letters" } },
        ),
    };
    ok(
        title,
        &session,
        html! { p role="status" { (done) } p { a href="/console/parked" { "Parked events" } } },
    )
}

async fn deliveries(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let Ok(store) = views::deliveries::store_of(&api.backends) else {
        return ok(
            "Deliveries",
            &session,
            html! { p.empty { "This backend keeps no deliveries: on AWS, give backend.aws.webhooks_queue (docs/events.md)." } },
        );
    };
    let endpoints = views::deliveries::endpoints_value(&api.config, &api.backends).await?;
    let on_line = matches!(store, views::deliveries::Store::Line(_));
    let status = match q.get("status").map(String::as_str) {
        Some("all") => None,
        Some(s) => paynotify_shared::ports::DeliveryStatus::parse(s),
        None => Some(paynotify_shared::ports::DeliveryStatus::DeadLettered),
    };
    let rows = store
        .list(&paynotify_shared::ports::DeliveryFilter {
            status: if on_line {
                Some(paynotify_shared::ports::DeliveryStatus::DeadLettered)
            } else {
                status
            },
            limit: 200,
            ..Default::default()
        })
        .await?;
    let operate = session.key.scope >= ApiScope::Operate;
    ok(
        "Deliveries",
        &session,
        html! {
            h2 { "Endpoints" }
            (table(&["endpoint", "URL", "pending", "dead-lettered", "lag", "failing since", "disabled"], endpoints.iter().map(|e| html! {
                tr {
                    td { (shown(&e["endpoint"])) } td { (shown(&e["url"])) } td { (shown(&e["pending"])) }
                    td { (shown(&e["dead_lettered"])) } td { (shown(&e["lag_secs"])) }
                    td { (shown(&e["failing_since"])) } td { (shown(&e["disabled"])) }
                }
            }).collect()))
            h2 { @if on_line || status == Some(paynotify_shared::ports::DeliveryStatus::DeadLettered) { "Held (retries spent)" } @else { "Deliveries" } }
            @if !on_line {
                p.note { a href="/console/deliveries" { "Held" } " · " a href="/console/deliveries?status=pending" { "pending" } " · " a href="/console/deliveries?status=delivered" { "delivered" } " · " a href="/console/deliveries?status=all" { "all" } }
            }
            @if rows.is_empty() { p.empty { "None." } }
            (table(&["endpoint", "event", "payment", "status", "attempts", "last error", ""], rows.iter().map(|d| html! {
                tr {
                    td { (clip(&d.endpoint)) }
                    td { (d.record.event_type.as_str()) br; code.small { (clip(&d.record.event_id)) } }
                    td { code { (clip(&d.record.payment_key)) } }
                    td { (d.status.as_str()) }
                    td { (d.attempts) }
                    td { (or_dash(d.last_error.as_deref())) }
                    td {
                        @if operate {
                            form.inline method="post" action="/console/deliveries/resend" {
                                (hidden(&session, &[("endpoint", &d.endpoint), ("event_id", &d.record.event_id)]))
                                button type="submit" { "Resend" }
                            }
                        }
                    }
                }
            }).collect()))
        },
    )
}

#[derive(Deserialize)]
struct ResendForm {
    #[serde(default)]
    token: String,
    endpoint: String,
    event_id: String,
    #[serde(default)]
    confirm: String,
}

async fn resend(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
    Form(form): Form<ResendForm>,
) -> Page {
    may_act(&session, &form.token)?;
    if form.confirm != "yes" {
        return confirmation(
            &session,
            "/console/deliveries/resend",
            html! { p { "Send event " code { (clip(&form.event_id)) } " to " strong { (clip(&form.endpoint)) } " again? A held one releases its payment's later events, in order." } },
            &[("endpoint", &form.endpoint), ("event_id", &form.event_id)],
            "Resend it",
        );
    }
    let result = resend_action(&api, &form.endpoint, &form.event_id).await?;
    audit(
        &api,
        &session.key,
        "console/deliveries/resend",
        &json!({ "endpoint": form.endpoint, "event_id": form.event_id }),
        &result,
    )
    .await?;
    ok(
        "Resent",
        &session,
        html! { p role="status" { "Resent (" (shown(&result["resent"])) "): " code { (clip(&form.event_id)) } " to " (clip(&form.endpoint)) "." } p { a href="/console/deliveries?status=all" { "Deliveries" } } },
    )
}

async fn reconcile(
    State(api): State<Api>,
    axum::Extension(session): axum::Extension<Session>,
) -> Page {
    let last = crate::reconcile::record::latest(&api.backends).await?;
    let Some((key, record)) = last else {
        return ok(
            "Reconcile",
            &session,
            html! { p.empty { "No report yet: paynotify reconcile keeps each run's report in the archive." } },
        );
    };
    let report = &record["report"];
    let empty = Vec::new();
    let discrepancies = report["discrepancies"].as_array().unwrap_or(&empty);
    let counts: Vec<(&String, &Value)> = report
        .as_object()
        .map(|o| o.iter().filter(|(_, v)| v.is_number()).collect())
        .unwrap_or_default();
    ok(
        "Reconcile",
        &session,
        html! {
            p { "Run at " (shown(&record["at"])) ": " @if record["clean"].as_bool() == Some(true) { strong.clean { "clean" } } @else { strong.bad { "discrepancies" } } }
            p.note { "Kept in the archive at " code { (clip(&key)) } }
            dl.counts { @for (k, v) in counts { dt { (clip(k)) } dd { (shown(v)) } } }
            @if !discrepancies.is_empty() {
                (table(&["kind", "subject", "detail"], discrepancies.iter().take(500).map(|d| html! {
                    tr { td { (shown(&d["kind"])) } td { code { (shown(&d["subject"])) } } td { (shown(&d["detail"])) } }
                }).collect()))
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_in_posted_from_another_site_is_refused() {
        let with = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9092"));
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
            }
            same_origin(&h)
        };
        assert!(with(None), "no Origin: a browser that sends none");
        assert!(with(Some("http://127.0.0.1:9092")));
        assert!(with(Some("https://127.0.0.1:9092")));
        assert!(!with(Some("https://evil.example")));
        assert!(!with(Some("http://127.0.0.1:9093")));
        assert!(!with(Some("null")));
    }

    #[test]
    fn long_values_are_cut_and_markup_is_escaped() {
        let long = "x".repeat(1 << 20);
        let cut = clip(&long);
        assert_eq!(cut.chars().count(), MAX_SHOWN + 1);
        assert!(cut.ends_with('…'));
        let hostile = "<script>alert(1)</script>";
        let page = html! { p { (clip(hostile)) } }.into_string();
        assert_eq!(page, "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>");
    }
}
