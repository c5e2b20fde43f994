//! The ledger table's stream on the emulator, read as Lambda's event source
//! reads it (`GetRecords` from the trim horizon, in order).

use paynotify_shared::config::Config;
use serde_json::{json, Value};

/// The emulator's DynamoDB Streams API, unsigned (the emulator does not
/// check signatures; it routes by the target and the credential's service).
pub async fn streams(endpoint: &str, target: &str, body: Value) -> Value {
    let answer = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header("X-Amz-Target", format!("DynamoDBStreams_20120810.{target}"))
        .header("Content-Type", "application/x-amz-json-1.0")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=test/20261205/us-east-1/dynamodb/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert!(status.is_success(), "{target}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// Every record of the table's stream, in order (one shard per table on
/// the emulator; shards are read parent first as Lambda reads them).
pub async fn stream_records(config: &Config) -> Vec<Value> {
    // The test's own reads: no role's calls.
    let mut aws = config.backend.aws.clone();
    aws.call_log = None;
    let endpoint = aws.endpoint_url.clone().unwrap();
    let clients = paynotify_shared::backend::aws::Clients::new(&aws).await;
    let table = clients
        .dynamodb
        .describe_table()
        .table_name(&aws.table)
        .send()
        .await
        .unwrap();
    let arn = table
        .table
        .unwrap()
        .latest_stream_arn
        .expect("the ledger table has a stream");
    let described = streams(&endpoint, "DescribeStream", json!({ "StreamArn": arn })).await;
    let mut records = Vec::new();
    for shard in described["StreamDescription"]["Shards"].as_array().unwrap() {
        let mut iterator = streams(
            &endpoint,
            "GetShardIterator",
            json!({ "StreamArn": arn, "ShardId": shard["ShardId"], "ShardIteratorType": "TRIM_HORIZON" }),
        )
        .await["ShardIterator"]
            .clone();
        loop {
            let page = streams(
                &endpoint,
                "GetRecords",
                json!({ "ShardIterator": iterator }),
            )
            .await;
            let got = page["Records"].as_array().cloned().unwrap_or_default();
            if got.is_empty() {
                break;
            }
            records.extend(got);
            iterator = page["NextShardIterator"].clone();
            if iterator.is_null() {
                break;
            }
        }
    }
    records
}
