//! `paynotify aws init`: creates the bucket, the DLQ, the queue with its
//! redrive policy, and the table when they do not exist. For emulators and
//! first trials; production uses `infra/`.

use std::time::Duration;

use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};
use aws_sdk_sqs::types::QueueAttributeName;

use super::{describe, Clients};
use crate::config::{AwsConfig, BackendConfig};

/// What `init` did, for the operator.
#[derive(Debug, Default, serde::Serialize)]
pub struct InitReport {
    pub bucket: String,
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    pub webhooks_queue_url: String,
    pub table: String,
}

/// Creates whatever is missing.
///
/// # Errors
/// The first failed call, described.
pub async fn init(config: &BackendConfig) -> Result<InitReport, String> {
    let aws = &config.aws;
    let c = Clients::new(aws).await;
    create_bucket(&c, aws).await?;
    let (queue_url, dlq_url) = create_queues(&c, config).await?;
    let webhooks_queue_url = create_webhooks_queue(&c, aws).await?;
    create_table(&c, aws).await?;
    Ok(InitReport {
        bucket: aws.bucket.clone(),
        queue_url,
        dead_letter_queue_url: dlq_url,
        webhooks_queue_url,
        table: aws.table.clone(),
    })
}

/// The archive's bucket, unless this account already owns it.
async fn create_bucket(c: &Clients, aws: &AwsConfig) -> Result<(), String> {
    let mut bucket = c.s3.create_bucket().bucket(&aws.bucket);
    if aws.region != "us-east-1" {
        bucket = bucket.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    aws.region.as_str(),
                ))
                .build(),
        );
    }
    if let Err(e) = bucket.send().await {
        let owned = e
            .as_service_error()
            .is_some_and(|s| s.is_bucket_already_owned_by_you());
        if !owned {
            return Err(format!("bucket {}: {}", aws.bucket, describe(&e)));
        }
    }
    Ok(())
}

/// The dead-letter queue, then the queue redriving to it; their URLs.
async fn create_queues(c: &Clients, config: &BackendConfig) -> Result<(String, String), String> {
    let aws = &config.aws;
    let dlq_url = c
        .sqs
        .create_queue()
        .queue_name(&aws.dead_letter_queue)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| format!("queue {}: {}", aws.dead_letter_queue, describe(&e)))?
        .queue_url
        .unwrap_or_default();
    let dlq_arn = c
        .sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| format!("queue {}: {}", aws.dead_letter_queue, describe(&e)))?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_default();
    // As the local queue: a message received `max_receives` times without
    // being deleted moves to the DLQ instead of being delivered again.
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": config.max_receives.to_string(),
    });
    let queue_url = c
        .sqs
        .create_queue()
        .queue_name(&aws.queue)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            config.visibility_timeout_secs.to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .map_err(|e| format!("queue {}: {}", aws.queue, describe(&e)))?
        .queue_url
        .unwrap_or_default();
    Ok((queue_url, dlq_url))
}

/// The FIFO queue of outgoing events to the merchant's webhook endpoints:
/// fourteen days' retention (longer than any retry schedule), deduplication
/// and throughput per message group (one group per payment and endpoint).
async fn create_webhooks_queue(c: &Clients, aws: &AwsConfig) -> Result<String, String> {
    Ok(c.sqs
        .create_queue()
        .queue_name(&aws.webhooks_queue)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .attributes(QueueAttributeName::VisibilityTimeout, "60")
        .attributes(QueueAttributeName::DeduplicationScope, "messageGroup")
        .attributes(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId")
        .send()
        .await
        .map_err(|e| format!("queue {}: {}", aws.webhooks_queue, describe(&e)))?
        .queue_url
        .unwrap_or_default())
}

fn key(name: &str, t: KeyType) -> Result<KeySchemaElement, String> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(t)
        .build()
        .map_err(|e| e.to_string())
}

fn attr(name: &str, t: ScalarAttributeType) -> Result<AttributeDefinition, String> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(t)
        .build()
        .map_err(|e| e.to_string())
}

/// One of the ledger's sparse indexes: (name, hash key, range key if
/// any, projection).
type Index = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
);

fn index((name, hash, range, projection): Index) -> Result<GlobalSecondaryIndex, String> {
    let mut gsi = GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(hash, KeyType::Hash)?);
    if let Some(range) = range {
        gsi = gsi.key_schema(key(range, KeyType::Range)?);
    }
    gsi.projection(
        Projection::builder()
            .projection_type(ProjectionType::from(projection))
            .build(),
    )
    .build()
    .map_err(|e| e.to_string())
}

fn index_attrs((_, hash, range, _): Index) -> Result<Vec<AttributeDefinition>, String> {
    let mut attrs = vec![attr(hash, ScalarAttributeType::S)?];
    if let Some(range) = range {
        attrs.push(attr(range, ScalarAttributeType::N)?);
    }
    Ok(attrs)
}

/// The ledger table with its indexes and (when configured) its stream; a
/// table from an earlier version gains what it lacks.
async fn create_table(c: &Clients, aws: &AwsConfig) -> Result<(), String> {
    // Sparse indexes over the one table (DESIGN §3): parked events (for
    // `reconcile` and `/metrics`), events by day (settlement
    // reconciliation), status queries by due time (the query scheduler).
    let mut create = c
        .dynamodb
        .create_table()
        .table_name(&aws.table)
        .billing_mode(BillingMode::PayPerRequest)
        .set_stream_specification(aws.ledger_stream.then(ledger_stream).transpose()?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .attribute_definitions(attr("pk", ScalarAttributeType::S)?)
        .attribute_definitions(attr("sk", ScalarAttributeType::S)?);
    for i in super::ledger::INDEXES {
        for a in index_attrs(i)? {
            create = create.attribute_definitions(a);
        }
        create = create.global_secondary_indexes(index(i)?);
    }
    if let Err(e) = create.send().await {
        if !e
            .as_service_error()
            .is_some_and(|s| s.is_resource_in_use_exception())
        {
            return Err(format!("table {}: {}", aws.table, describe(&e)));
        }
        add_missing_indexes(c, aws).await?;
        if aws.ledger_stream {
            enable_stream(c, &aws.table).await?;
        }
    }
    wait_active(c, &aws.table).await
}

/// A table from an earlier version: adds the indexes it lacks, one at a
/// time (DynamoDB creates one index per update).
async fn add_missing_indexes(c: &Clients, aws: &AwsConfig) -> Result<(), String> {
    for i in super::ledger::INDEXES {
        let table = c
            .dynamodb
            .describe_table()
            .table_name(&aws.table)
            .send()
            .await
            .map_err(|e| format!("table {}: {}", aws.table, describe(&e)))?;
        let has_index = table
            .table
            .and_then(|t| t.global_secondary_indexes)
            .unwrap_or_default()
            .iter()
            .any(|x| x.index_name() == Some(i.0));
        if has_index {
            continue;
        }
        let gsi = index(i)?;
        c.dynamodb
            .update_table()
            .table_name(&aws.table)
            .set_attribute_definitions(Some(index_attrs(i)?))
            .global_secondary_index_updates(
                GlobalSecondaryIndexUpdate::builder()
                    .create(
                        CreateGlobalSecondaryIndexAction::builder()
                            .index_name(i.0)
                            .set_key_schema(Some(gsi.key_schema().to_vec()))
                            .set_projection(gsi.projection().cloned())
                            .build()
                            .map_err(|e| e.to_string())?,
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                format!(
                    "adding the {} index to {}: {}",
                    i.0,
                    aws.table,
                    describe(&e)
                )
            })?;
        wait_active(c, &aws.table).await?;
    }
    Ok(())
}

async fn wait_active(c: &Clients, table: &str) -> Result<(), String> {
    c.dynamodb
        .wait_until_table_exists()
        .table_name(table)
        .wait(Duration::from_secs(120))
        .await
        .map(|_| ())
        .map_err(|e| format!("table {table} never became active: {e}"))
}

/// The ledger's stream: the outbox of the outgoing events (DESIGN §8), read
/// by the events function. Both images: an event is what changed.
fn ledger_stream() -> Result<aws_sdk_dynamodb::types::StreamSpecification, String> {
    aws_sdk_dynamodb::types::StreamSpecification::builder()
        .stream_enabled(true)
        .stream_view_type(aws_sdk_dynamodb::types::StreamViewType::NewAndOldImages)
        .build()
        .map_err(|e| e.to_string())
}

/// Turns on the stream of a table created before the ledger had one.
async fn enable_stream(c: &Clients, table: &str) -> Result<(), String> {
    let described = c
        .dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| format!("table {table}: {}", describe(&e)))?;
    let spec = described
        .table
        .and_then(|t| t.stream_specification)
        .filter(|s| s.stream_enabled);
    match spec.and_then(|s| s.stream_view_type) {
        Some(aws_sdk_dynamodb::types::StreamViewType::NewAndOldImages) => return Ok(()),
        Some(other) => {
            return Err(format!(
                "table {table} has a {other:?} stream; the outgoing events need \
                 NEW_AND_OLD_IMAGES (DynamoDB changes a stream's view only by \
                 disabling it, which loses its unread records: do it by hand)"
            ))
        }
        None => {}
    }
    c.dynamodb
        .update_table()
        .table_name(table)
        .stream_specification(ledger_stream()?)
        .send()
        .await
        .map_err(|e| format!("enabling the stream of {table}: {}", describe(&e)))?;
    Ok(())
}
