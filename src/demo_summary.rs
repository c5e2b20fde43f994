//! What `paynotify demo` prints at the end, and whether it all adds up.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use paynotify_shared::config::Config;
use paynotify_worker::StatsSnapshot;

use crate::demo_cmd::{Recovered, LOST_PAYMENTS, MERCHANT};
use crate::demo_receiver::Outcome;

/// Everything the demo measured.
pub(crate) struct Summary {
    pub(crate) report: paynotify::simulate::Report,
    pub(crate) stats: StatsSnapshot,
    pub(crate) archived: usize,
    pub(crate) segments: usize,
    pub(crate) dead_lettered: usize,
    pub(crate) dlq_reasons: BTreeMap<String, u64>,
    /// Messages still in the queue after the drain.
    pub(crate) left: u64,
    pub(crate) sent_in: Duration,
    pub(crate) drained_in: Duration,
    pub(crate) reconciled: paynotify::reconcile::Report,
    pub(crate) recovered: Recovered,
    /// What the merchant's receiver heard (embedded backend).
    pub(crate) heard: Option<Outcome>,
    /// AWS API calls by operation (AWS backend).
    pub(crate) api_calls: Option<BTreeMap<String, u64>>,
}

impl Summary {
    /// Prints the summary; true when nothing was lost and the ledger, the
    /// reconcile and the receiver all agree with what was sent.
    pub(crate) fn print(&self, config: &Config, config_path: &Path, dir: &Path) -> bool {
        self.print_counts();
        let ledger_matches =
            print_ledger_check(&self.report, &self.reconciled.ledger, &self.dlq_reasons);
        self.print_checks();
        println!();
        self.print_where(config, config_path, dir);
        let lost = self.report.accepted as usize != self.archived
            || self.recovered.paid != LOST_PAYMENTS
            || self.left > 0
            || !self.reconciled.is_clean()
            || !ledger_matches
            || self.heard.as_ref().is_some_and(|h| !h.ok());
        !lost
    }

    fn print_counts(&self) {
        let (report, stats) = (&self.report, &self.stats);
        println!();
        println!(
            "received (HTTP 200)      {:>8}   of {} sent, {} never accepted",
            report.accepted, report.sent, report.failed
        );
        println!(
            "archived                 {:>8}   in {} segments",
            self.archived, self.segments
        );
        println!("applied (state changed)  {:>8}", stats.applied);
        println!("recorded, no change      {:>8}", stats.recorded);
        println!(
            "duplicates suppressed    {:>8}   ({} extra PSP deliveries sent)",
            stats.duplicates, report.duplicate_deliveries
        );
        println!("parked (event early)     {:>8}", stats.parked);
        println!("retried (transient)      {:>8}", stats.retried);
        println!("dead-lettered            {:>8}", self.dead_lettered);
        for (reason, n) in &self.dlq_reasons {
            println!("  {reason:<22} {n:>8}");
        }
        println!("still queued             {:>8}", self.left);
        println!(
            "throughput               {:>8.0} notifications/s accepted ({:.1} s), all applied after {:.1} s",
            report.accepted as f64 / self.sent_in.as_secs_f64(),
            self.sent_in.as_secs_f64(),
            self.drained_in.as_secs_f64()
        );
        println!(
            "receipt -> applied       p50 {:.1} ms, p99 {:.1} ms",
            stats.p50_ms, stats.p99_ms
        );
    }

    fn print_checks(&self) {
        let reconciled = &self.reconciled;
        println!(
            "reconcile                {}",
            if reconciled.is_clean() {
                format!(
                    "clean: {} archived, {} in the ledger, {} parked, {} dead-lettered",
                    reconciled.archived,
                    reconciled.in_ledger,
                    reconciled.parked,
                    reconciled.dead_lettered
                )
            } else {
                format!("{} discrepancies", reconciled.discrepancies.len())
            }
        );
        for d in reconciled.discrepancies.iter().take(10) {
            println!("  {:<22} {} {}", d.kind, d.subject, d.detail);
        }
        println!(
            "status queries           {} of {} payments whose notification never came are PAID \
             ({} queries to the simulated UnionPay gateway, {:.1} s)",
            self.recovered.paid,
            LOST_PAYMENTS,
            self.recovered.queries,
            self.recovered.elapsed.as_secs_f64()
        );
        if let Some(h) = &self.heard {
            h.print();
        }
    }

    /// Where the data is and how to look at it.
    fn print_where(&self, config: &Config, config_path: &Path, dir: &Path) {
        let accepted = self.report.accepted;
        match &self.api_calls {
            Some(calls) => {
                println!("AWS API calls per accepted notification ({accepted} accepted):");
                for (op, n) in calls {
                    println!(
                        "  {op:<32} {:>8.3}   ({n} calls)",
                        *n as f64 / accepted.max(1) as f64
                    );
                }
                println!();
                println!(
                    "resources bucket/queue/table {} on {}",
                    config.backend.aws.bucket,
                    config.backend.aws.endpoint_url.as_deref().unwrap_or("AWS")
                );
            }
            None => {
                println!(
                    "archive   {}/data/archive/raw/source=unionpay/",
                    dir.display()
                );
                println!("ledger    {}/data/ledger.sqlite3", dir.display());
                println!(
                    "queue+DLQ {}/data/queue.sqlite3 (and queue-N.sqlite3, its other shards)",
                    dir.display()
                );
            }
        }
        let cfg = config_path.display();
        let sample = &self.report.sample_payment_ref;
        println!("inspect   paynotify dlq list --config {cfg}");
        println!("          paynotify txn history --config {cfg} unionpay {MERCHANT} {sample}");
        println!("          paynotify txn get --config {cfg} unionpay {MERCHANT} {sample} --json");
        println!("          paynotify serve --config {cfg}");
    }
}

/// Prints the ledger the simulation should have produced beside the one it
/// did and says whether they match.
fn print_ledger_check(
    report: &paynotify::simulate::Report,
    got: &paynotify::reconcile::LedgerTotals,
    dead: &std::collections::BTreeMap<String, u64>,
) -> bool {
    let rows = report.check(got, dead);
    println!();
    println!("{:<32} {:>18} {:>18}", "ledger", "expected", "got");
    for row in &rows {
        println!(
            "{:<32} {:>18} {:>18}{}",
            row.what,
            row.expected,
            row.got,
            if row.matches() { "" } else { "   <- differs" }
        );
    }
    let all = rows.iter().all(paynotify::simulate::CheckRow::matches);
    println!(
        "the ledger {} what was sent",
        if all { "matches" } else { "does NOT match" }
    );
    all
}
