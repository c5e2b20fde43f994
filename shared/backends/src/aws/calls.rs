//! Counts the AWS API calls a process makes, by service and operation, so
//! calls per notification can be measured (BENCHMARKS.md), and, with
//! `backend.aws.call_log`, writes each call down as the IAM actions it needs
//! and the resources it touches (what `infra/tests/test_iam.py` checks
//! against the stack's policies).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef, Input,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use serde_json::{json, Value};

use crate::config::AwsConfig;

/// Calls so far, keyed `Service.Operation`.
#[derive(Debug, Default)]
pub struct ApiCalls {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    log: Option<Arc<Mutex<std::fs::File>>>,
}

impl ApiCalls {
    /// Counts only, or also appends each call to `config.call_log`: a first
    /// line naming the resources of `config`, then one JSON line per call
    /// with its IAM actions, resources and HTTP status (never a payload).
    ///
    /// # Errors
    /// The log file cannot be opened or written.
    pub(crate) fn new(config: &AwsConfig) -> std::io::Result<Self> {
        let log = match &config.call_log {
            None => None,
            Some(path) => Some(Arc::new(Mutex::new(open_log(path, config)?))),
        };
        Ok(Self {
            counts: Arc::default(),
            log,
        })
    }

    /// An interceptor that adds to these counts.
    pub(crate) fn interceptor(&self) -> CountingInterceptor {
        CountingInterceptor {
            counts: self.counts.clone(),
            log: self.log.clone(),
        }
    }

    /// Whether calls are written to a log.
    pub(crate) fn logging(&self) -> bool {
        self.log.is_some()
    }
}

impl crate::ports::CallCounter for ApiCalls {
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

fn open_log(path: &Path, config: &AwsConfig) -> std::io::Result<std::fs::File> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let names = json!({
        "resources": {
            "region": config.region,
            "bucket": config.bucket,
            "queue": config.queue,
            "dead_letter_queue": config.dead_letter_queue,
            "webhooks_queue": config.webhooks_queue,
            "table": config.table,
            "kms_key_id": config.kms_key_id,
        }
    });
    writeln!(file, "{names}")?;
    Ok(file)
}

#[derive(Debug, Clone)]
pub(crate) struct CountingInterceptor {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    log: Option<Arc<Mutex<std::fs::File>>>,
}

/// What one call needs, kept from before its request is serialized (the
/// input is gone by then) until its outcome is known.
#[derive(Debug)]
struct Needs(Vec<Value>);

impl Storable for Needs {
    type Storer = StoreReplace<Self>;
}

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "paynotify-api-call-counter"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Client interceptors run before the operation's configuration
        // (its `Metadata`) is loaded: the input alone says what it needs.
        if self.log.is_some() {
            let needs = needs(context.input());
            cfg.interceptor_state().store_put(Needs(needs));
        }
        Ok(())
    }

    // Counted per HTTP request (retries included): that is what AWS bills.
    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            if let Ok(mut c) = self.counts.lock() {
                *c.entry(format!("{}.{}", m.service(), m.name()))
                    .or_default() += 1;
            }
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (Some(log), Some(m)) = (&self.log, cfg.load::<Metadata>()) else {
            return Ok(());
        };
        let needs = cfg.load::<Needs>().map(|n| n.0.clone()).unwrap_or_default();
        let line = json!({
            "service": m.service(),
            "operation": m.name(),
            "status": context.response().map(|r| r.status().as_u16()),
            "needs": needs,
        });
        if let Ok(mut f) = log.lock() {
            // A diagnostic: a failed write must not fail the call.
            let _ = writeln!(f, "{line}");
        }
        Ok(())
    }
}

fn need(action: &str, resource: Value) -> Value {
    json!({"action": action, "resource": resource})
}

/// The IAM actions `operation` is authorized as, each with the resource it
/// names. Batch calls are authorized as their single action; a DynamoDB
/// transaction as each of its items' actions (not `TransactWriteItems`,
/// which is no IAM action: AWS's "Using IAM with DynamoDB transactions").
/// An operation not listed here is written down with no resource, which the
/// check refuses: a new call must be taught here.
fn needs(input: &Input) -> Vec<Value> {
    use aws_sdk_dynamodb::operation as ddb;
    use aws_sdk_s3::operation as s3;
    use aws_sdk_secretsmanager::operation as sm;
    use aws_sdk_sqs::operation as sqs;
    macro_rules! sqs_call {
        ($t:ty, $action:literal) => {
            if let Some(i) = input.downcast_ref::<$t>() {
                return vec![need($action, json!({"queue_url": i.queue_url()}))];
            }
        };
    }
    macro_rules! table_call {
        ($t:ty, $action:literal) => {
            if let Some(i) = input.downcast_ref::<$t>() {
                return vec![need($action, json!({"table": i.table_name()}))];
            }
        };
    }
    if let Some(i) = input.downcast_ref::<s3::put_object::PutObjectInput>() {
        return vec![need(
            "s3:PutObject",
            json!({"bucket": i.bucket(), "key": i.key()}),
        )];
    }
    if let Some(i) = input.downcast_ref::<s3::get_object::GetObjectInput>() {
        return vec![need(
            "s3:GetObject",
            json!({"bucket": i.bucket(), "key": i.key()}),
        )];
    }
    if let Some(i) = input.downcast_ref::<s3::head_object::HeadObjectInput>() {
        return vec![need(
            "s3:GetObject",
            json!({"bucket": i.bucket(), "key": i.key()}),
        )];
    }
    if let Some(i) = input.downcast_ref::<s3::list_objects_v2::ListObjectsV2Input>() {
        return vec![need(
            "s3:ListBucket",
            json!({"bucket": i.bucket(), "prefix": i.prefix()}),
        )];
    }
    sqs_call!(sqs::send_message::SendMessageInput, "sqs:SendMessage");
    sqs_call!(
        sqs::send_message_batch::SendMessageBatchInput,
        "sqs:SendMessage"
    );
    sqs_call!(
        sqs::receive_message::ReceiveMessageInput,
        "sqs:ReceiveMessage"
    );
    sqs_call!(sqs::delete_message::DeleteMessageInput, "sqs:DeleteMessage");
    sqs_call!(
        sqs::delete_message_batch::DeleteMessageBatchInput,
        "sqs:DeleteMessage"
    );
    sqs_call!(
        sqs::change_message_visibility::ChangeMessageVisibilityInput,
        "sqs:ChangeMessageVisibility"
    );
    sqs_call!(
        sqs::change_message_visibility_batch::ChangeMessageVisibilityBatchInput,
        "sqs:ChangeMessageVisibility"
    );
    sqs_call!(
        sqs::get_queue_attributes::GetQueueAttributesInput,
        "sqs:GetQueueAttributes"
    );
    if let Some(i) = input.downcast_ref::<sqs::get_queue_url::GetQueueUrlInput>() {
        return vec![need(
            "sqs:GetQueueUrl",
            json!({"queue_name": i.queue_name()}),
        )];
    }
    table_call!(ddb::get_item::GetItemInput, "dynamodb:GetItem");
    table_call!(ddb::put_item::PutItemInput, "dynamodb:PutItem");
    table_call!(ddb::update_item::UpdateItemInput, "dynamodb:UpdateItem");
    table_call!(ddb::delete_item::DeleteItemInput, "dynamodb:DeleteItem");
    table_call!(
        ddb::describe_table::DescribeTableInput,
        "dynamodb:DescribeTable"
    );
    if let Some(i) = input.downcast_ref::<ddb::query::QueryInput>() {
        return vec![need(
            "dynamodb:Query",
            json!({"table": i.table_name(), "index": i.index_name()}),
        )];
    }
    if let Some(i) = input.downcast_ref::<ddb::scan::ScanInput>() {
        return vec![need(
            "dynamodb:Scan",
            json!({"table": i.table_name(), "index": i.index_name()}),
        )];
    }
    if let Some(i) = input.downcast_ref::<ddb::transact_write_items::TransactWriteItemsInput>() {
        return i
            .transact_items()
            .iter()
            .filter_map(|item| {
                let (action, table) = if let Some(p) = item.put() {
                    ("dynamodb:PutItem", p.table_name())
                } else if let Some(u) = item.update() {
                    ("dynamodb:UpdateItem", u.table_name())
                } else if let Some(d) = item.delete() {
                    ("dynamodb:DeleteItem", d.table_name())
                } else {
                    (
                        "dynamodb:ConditionCheckItem",
                        item.condition_check()?.table_name(),
                    )
                };
                Some(need(action, json!({"table": table})))
            })
            .collect();
    }
    if let Some(i) =
        input.downcast_ref::<aws_sdk_sns::operation::publish_batch::PublishBatchInput>()
    {
        return vec![need("sns:Publish", json!({"topic_arn": i.topic_arn()}))];
    }
    if let Some(i) =
        input.downcast_ref::<aws_sdk_eventbridge::operation::put_events::PutEventsInput>()
    {
        // One action per bus its entries name (the default bus when none).
        let mut buses: Vec<&str> = i
            .entries()
            .iter()
            .map(|e| e.event_bus_name().unwrap_or("default"))
            .collect();
        buses.sort_unstable();
        buses.dedup();
        return buses
            .into_iter()
            .map(|bus| need("events:PutEvents", json!({"event_bus": bus})))
            .collect();
    }
    if let Some(i) = input.downcast_ref::<sm::get_secret_value::GetSecretValueInput>() {
        return vec![need(
            "secretsmanager:GetSecretValue",
            json!({"secret_id": i.secret_id()}),
        )];
    }
    vec![json!({"action": null})]
}
