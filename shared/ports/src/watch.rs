//! UnionPay's status-query watches, kept in the ledger.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A question paynotify owes a PSP about one transaction whose result is
/// late (UnionPay's status query), kept in the ledger so that any worker
/// may ask it and only one does at a time: a worker claims a due watch by
/// writing it with the next version and a `due_at` in the near future (a
/// lease), asks, and writes the answer with the version after that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// `{source}#{merchant}#{target}`: one watch per transaction.
    pub id: String,
    pub source: String,
    pub merchant: String,
    pub target: paynotify_schemes::unionpay::QueryTarget,
    /// UnionPay's id of the transaction, when a notification named it: an
    /// answer about the order that names none (a failure) is about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_id: Option<String>,
    /// Why it is asked: `expected` (a payment the merchant started),
    /// `in_process` (UnionPay said 03/04/05), `parked` (a refund or void
    /// waits for it), `settlement` (in the settlement file, not the ledger).
    pub reason: String,
    /// Since when its schedule counts.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// Queries made so far.
    pub attempts: u32,
    /// Queries in a row that got no answer (network, archive or ledger
    /// failures): retried with a backoff, without using a step.
    #[serde(default)]
    pub failures: u32,
    /// When it is next due; `None` once finished.
    #[serde(with = "time::serde::rfc3339::option")]
    pub due_at: Option<OffsetDateTime>,
    /// The last answer, in words.
    pub last_answer: Option<String>,
    /// The final answer, once there is one (or the schedule ran out).
    pub finished: Option<String>,
    /// Guards every write; the first write has version 1.
    pub version: u64,
}

impl Watch {
    /// The id of the watch of `target` of `merchant` at `source`.
    pub fn id_for(
        source: &str,
        merchant: &str,
        target: &paynotify_schemes::unionpay::QueryTarget,
    ) -> String {
        use paynotify_schemes::unionpay::QueryTarget;
        match target {
            QueryTarget::Order { order_id, txn_time } => {
                format!("{source}#{merchant}#order:{order_id}@{txn_time}")
            }
            QueryTarget::QueryId { query_id } => format!("{source}#{merchant}#query:{query_id}"),
        }
    }
}

/// Watches read at most for one pass of the scheduler or one listing.
pub const WATCH_SCAN_LIMIT: usize = 1_000;
