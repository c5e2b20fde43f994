//! The console behind an AWS Application Load Balancer's OIDC sign-in
//! (`api.oidc`; docs/console.md#on-aws): the user the load balancer's
//! `x-amzn-oidc-data` names is signed in only when the token verifies: a
//! key server on loopback plays AWS's (`public_keys_url`), and tokens are
//! minted as a load balancer mints them (ES256, base64url with padding).
//! A forged, foreign, expired or unlisted user's token gets no page; a
//! reader cannot act; an operator acts with the form's token and is named
//! in the audit record. Without `api.oidc` the header means nothing.

use std::time::{Duration, Instant};

use paynotify::api::oidc::minted::Signer;
use paynotify_shared::config::{AlbOidcConfig, ApiScope, SecretRef};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::app::{spawn_app_tweaked, TestApp};
use support::Kind;

#[macro_use]
mod support;

const ARN: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/paynotify/50dc6c495c0c9188";
const ISSUER: &str = "https://idp.example.com";
const OPERATOR: &str = "ops@example.com";
const READER: &str = "reader@example.com";

fn header(kid: &str, signer: &str, exp: i64) -> Value {
    json!({"typ": "JWT", "alg": "ES256", "kid": kid, "signer": signer, "iss": ISSUER,
           "client": "console", "exp": exp})
}

fn claims(email: &str, exp: i64) -> Value {
    json!({"sub": format!("sub-{email}"), "email": email, "email_verified": "true",
           "exp": exp, "iss": ISSUER})
}

fn soon() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() + 120
}

async fn app_with_oidc(keys_url: Option<String>) -> TestApp {
    spawn_app_tweaked(Kind::Local, paynotify::app::AppOptions::all(), move |c| {
        support::api_keys(c, &[]);
        if let Some(url) = keys_url {
            let secret = c.backend.data_dir.parent().unwrap().join("form.secret");
            std::fs::write(&secret, "s".repeat(48)).unwrap();
            c.api.oidc = Some(AlbOidcConfig {
                load_balancer_arn: ARN.into(),
                issuer: ISSUER.into(),
                public_keys_url: Some(url),
                operators: vec![OPERATOR.into()],
                readers: vec![READER.into()],
                form_secret: SecretRef::File(secret),
            });
        } else {
            support::api_keys(c, &[("k", ApiScope::Read, &"k".repeat(40))]);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_verified_load_balancer_sign_in_opens_the_console() {
    let alb = Signer::new();
    let attacker = Signer::new();
    let url = paynotify::api::oidc::minted::key_server(vec![
        ("k1", alb.public_pem()),
        ("k9", attacker.public_pem()),
    ])
    .await
    .0;
    let t = app_with_oidc(Some(url)).await;
    let base = format!("http://{}", t.app().api_addr.expect("the API listens"));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, token: Option<String>| {
        let mut r = http.get(format!("{base}{path}"));
        if let Some(t) = token {
            r = r.header("x-amzn-oidc-data", t);
        }
        r.send()
    };

    // A refund before its purchase: something for the parked page.
    t.sim.send(t.sim.refund("o1", "o1-r1", 300)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.parked_now().await.is_empty() {
        assert!(Instant::now() < deadline, "the refund was never parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ops = alb.token(&header("k1", ARN, soon()), &claims(OPERATOR, soon()));
    let page = get("/console/", Some(ops.clone())).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("oidc:ops@example.com · operate"),
        "{html:.3000}"
    );
    // The load balancer signs out, not the console.
    assert!(!html.contains("/console/logout"), "{html:.3000}");

    // Tokens that must open nothing: another key under the load balancer's
    // kid; another account's load balancer with its own valid key; expired;
    // another identity provider; a user in neither list; not a token.
    let mut other_iss = header("k1", ARN, soon());
    other_iss["iss"] = json!("https://evil.example.com");
    let foreign = "arn:aws:elasticloadbalancing:us-east-1:999999999999:loadbalancer/app/x/1";
    let refused = [
        (
            attacker.token(&header("k1", ARN, soon()), &claims(OPERATOR, soon())),
            StatusCode::UNAUTHORIZED,
        ),
        (
            attacker.token(&header("k9", foreign, soon()), &claims(OPERATOR, soon())),
            StatusCode::UNAUTHORIZED,
        ),
        (
            alb.token(
                &header("k1", ARN, soon() - 600),
                &claims(OPERATOR, soon() - 600),
            ),
            StatusCode::UNAUTHORIZED,
        ),
        (
            alb.token(&other_iss, &claims(OPERATOR, soon())),
            StatusCode::UNAUTHORIZED,
        ),
        (
            alb.token(
                &header("k1", ARN, soon()),
                &claims("eve@example.com", soon()),
            ),
            StatusCode::FORBIDDEN,
        ),
        ("not-a-token".to_owned(), StatusCode::UNAUTHORIZED),
    ];
    for (token, status) in refused {
        for path in ["/console/", "/console/parked", "/console/dead-letters"] {
            let r = get(path, Some(token.clone())).await.unwrap();
            assert_eq!(r.status(), status, "{path} with {token:.60}");
            let body = r.text().await.unwrap();
            assert!(!body.contains("o1-r1"), "{body:.2000}");
        }
    }
    // No header: the sign-in page, as without the load balancer.
    let r = get("/console/", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    // A reader reads, but may not act, even with its own form token.
    let reader = alb.token(&header("k1", ARN, soon()), &claims(READER, soon()));
    let html = get("/console/parked", Some(reader.clone()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("oidc:reader@example.com · read"),
        "{html:.3000}"
    );
    // Its pages hold no action form; the token a form of its would carry:
    let reader_token = {
        use base64::Engine as _;
        let key =
            paynotify::api::keys::Key::from_secret("r", ApiScope::Read, "s".repeat(48).as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(key.sign(b"form|oidc|reader@example.com"))
    };
    assert!(!html.contains("name=\"token\""), "{html:.3000}");
    let ops_html = get("/console/parked", Some(ops.clone()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (payment_key, event_key) = (
        support::form_field(&ops_html, "payment_key"),
        support::form_field(&ops_html, "event_key"),
    );
    let resolve = |token: String, form_token: String| {
        http.post(format!("{base}/console/parked/resolve"))
            .header("x-amzn-oidc-data", token)
            .form(&[
                ("token", form_token.as_str()),
                ("payment_key", payment_key.as_str()),
                ("event_key", event_key.as_str()),
                ("note", "refund of a test order"),
                ("confirm", "yes"),
            ])
            .send()
    };
    let r = resolve(reader.clone(), reader_token.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The operator, with the reader's form token: refused too.
    let r = resolve(ops.clone(), reader_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!t.parked_now().await.is_empty());

    // The operator, with the form token a page gave them, under a token
    // minted later (every request carries a fresh one).
    let later = alb.token(
        &header("k1", ARN, soon() + 5),
        &claims(OPERATOR, soon() + 5),
    );
    let r = resolve(later, support::form_field(&ops_html, "token"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(t.parked_now().await.is_empty());
    let audits = t.keys_under(paynotify::api::AUDIT_PREFIX).await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    let record: Value =
        serde_json::from_slice(&t.app().backends.archive.get(&audits[0]).await.unwrap()).unwrap();
    assert_eq!(
        (
            record["key"].as_str(),
            record["scope"].as_str(),
            record["action"].as_str()
        ),
        (
            Some("oidc:ops@example.com"),
            Some("operate"),
            Some("console/parked/resolve")
        ),
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_api_oidc_the_load_balancer_header_means_nothing() {
    let alb = Signer::new();
    let t = app_with_oidc(None).await;
    let base = format!("http://{}", t.app().api_addr.expect("the API listens"));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let token = alb.token(&header("k1", ARN, soon()), &claims(OPERATOR, soon()));
    for path in ["/console/", "/console/parked"] {
        let r = http
            .get(format!("{base}{path}"))
            .header("x-amzn-oidc-data", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
    }
    // Nor does it open the API.
    let r = http
        .get(format!("{base}/api/v1/parked"))
        .header("x-amzn-oidc-data", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
