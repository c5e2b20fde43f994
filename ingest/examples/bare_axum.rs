//! The baseline for ingest benchmarks: a bare axum server that reads the body
//! of `POST /notify/{source}` and answers 200 "ok", doing nothing durable.
//! `cargo run --release -p paynotify-ingest --example bare_axum -- 127.0.0.1:8099`

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let app = Router::new().route("/notify/{source}", post(|_body: Bytes| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
