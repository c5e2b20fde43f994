//! `paynotify-lambda-webhooks`: the Lambda bootstrap of the webhooks
//! function (an SQS FIFO event source on the webhook line, with
//! `ReportBatchItemFailures`).

use std::sync::Arc;
use std::time::Instant;

use lambda_runtime::{service_fn, LambdaEvent};
use paynotify_lambda::webhooks::Webhooks;
use paynotify_shared::telemetry::init_logging;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_logging("info");
    let started = Instant::now();
    let config = paynotify_lambda::load_config()?;
    let webhooks = Arc::new(Webhooks::from_config(&config).await?);
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1e3,
        "webhooks ready"
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let webhooks = webhooks.clone();
        async move {
            webhooks
                .handle(event.payload, Some(event.context.deadline))
                .await
                .map_err(lambda_runtime::Diagnostic::from)
        }
    }))
    .await
}
