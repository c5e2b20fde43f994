//! UnionPay's status-query watches and the store that keeps them (in the
//! ledger's database or table, behind a port of its own: only the
//! UnionPay status-query scheduler uses it).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ApplyOutcome, LedgerError};

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

/// Where watches are kept.
///
/// # Contract
/// - `put_watch` stores a watch when the version stored under its id is
///   `watch.version - 1` (none stored counts as 0), else it is a
///   `VersionConflict` and nothing changes.
/// - `get_watch` reads one back.
/// - `due_watches` lists unfinished watches due at or before `t`, soonest
///   first, at most `limit`.
#[async_trait]
pub trait WatchStore: Send + Sync {
    async fn put_watch(&self, watch: &Watch) -> Result<ApplyOutcome, LedgerError>;
    async fn get_watch(&self, id: &str) -> Result<Option<Watch>, LedgerError>;
    async fn due_watches(&self, t: OffsetDateTime, limit: usize)
        -> Result<Vec<Watch>, LedgerError>;
}
