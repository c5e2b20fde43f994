//! `paynotify-lambda-events`: the Lambda bootstrap of the events function
//! (a DynamoDB Streams event source on the ledger table, with
//! `ReportBatchItemFailures`).

use std::sync::Arc;
use std::time::Instant;

use lambda_runtime::{service_fn, LambdaEvent};
use paynotify_lambda::events::Events;
use paynotify_shared::telemetry::init_logging;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_logging("info");
    let started = Instant::now();
    let config = paynotify_lambda::load_config()?;
    let events = Arc::new(Events::from_config(&config).await?);
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1e3,
        "events ready"
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let events = events.clone();
        async move {
            events
                .handle(event.payload)
                .await
                .map_err(lambda_runtime::Diagnostic::from)
        }
    }))
    .await
}
