//! `paynotify-lambda-worker`: the Lambda bootstrap of the worker (an SQS
//! event source with `ReportBatchItemFailures`, and an EventBridge schedule
//! for the parked-event check).

use std::sync::Arc;
use std::time::Instant;

use lambda_runtime::{service_fn, LambdaEvent};
use paynotify_lambda::sqs::Worker;
use paynotify_shared::telemetry::init_logging;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_logging("info");
    let started = Instant::now();
    let config = paynotify_lambda::load_config()?;
    let worker = Arc::new(Worker::from_config(&config).await?);
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1e3,
        "worker ready"
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let worker = worker.clone();
        // A named `errorType` (EventError::kind), not the error's Rust type.
        async move {
            worker
                .handle(event.payload)
                .await
                .map_err(lambda_runtime::Diagnostic::from)
        }
    }))
    .await
}
