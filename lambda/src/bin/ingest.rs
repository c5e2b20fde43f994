//! `paynotify-lambda-ingest`: the Lambda bootstrap of the ingest
//! (API Gateway HTTP API or Function URL, payload 2.0).

use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use lambda_runtime::{service_fn, LambdaEvent};
use paynotify_lambda::http::Ingest;
use paynotify_shared::telemetry::init_logging;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_logging("info");
    let started = Instant::now();
    let config = paynotify_lambda::load_config()?;
    let ingest = Arc::new(Ingest::from_config(&config).await?);
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1e3,
        "ingest ready"
    );
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayV2httpRequest>| {
            let ingest = ingest.clone();
            async move { Ok::<_, lambda_runtime::Error>(ingest.handle(event.payload).await) }
        },
    ))
    .await
}
