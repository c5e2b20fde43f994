//! A traffic mix sent through a simulator, and the report of what became of it.

use super::*;

/// The traffic mix of a simulation.
#[derive(Debug, Clone)]
pub struct Mix {
    /// Payments to simulate (each a purchase, plus its refunds or void).
    pub count: usize,
    /// Notifications per second across all senders (0 = as fast as possible).
    pub rate: f64,
    /// Fraction of purchases UnionPay delivers 8 times concurrently.
    pub duplicates: f64,
    /// Fraction of purchases also sent once more with `txnAmt` altered.
    pub tamper: f64,
    /// Fraction of payments refunded (half partially then fully, half fully).
    pub refunds: f64,
    /// Fraction of payments voided.
    pub voids: f64,
    /// Fraction of refunded payments whose first refund arrives before the purchase.
    pub early_refunds: f64,
    /// Concurrent senders.
    pub concurrency: usize,
    /// When set, a payment's later notifications (refunds, a void, the
    /// altered copy, the other deliveries of a duplicated one) are sent this
    /// long after its first delivery, as they come from a PSP (a refund
    /// minutes or days later, a retry after seconds), instead of at once.
    pub follow_up: Option<Duration>,
}

/// What a simulation sent and what the ledger should end up with.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// One simulated payment's reference (UnionPay `queryId`), to look up.
    pub sample_payment_ref: String,
    pub sent: u64,
    pub accepted: u64,
    pub failed: u64,
    pub duplicate_deliveries: u64,
    pub tampered: u64,
    pub forged: u64,
    pub expected_paid: u64,
    pub expected_refunded: u64,
    pub expected_voided: u64,
    /// What the ledger should hold paid, in minor units (CNY): every
    /// purchase, voided ones included (a void leaves what was paid).
    pub expected_paid_minor: u64,
    /// What the ledger should hold refunded, in minor units (CNY).
    pub expected_refunded_minor: u64,
}

/// One line of the comparison of the expected ledger with the real one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    pub what: &'static str,
    pub expected: String,
    pub got: String,
}

impl CheckRow {
    pub fn matches(&self) -> bool {
        self.expected == self.got
    }
}

impl Report {
    /// What the ledger should hold after this simulation beside what it
    /// holds (`got`, from `reconcile`) and the dead letters by reason:
    /// payments by status, paid and refunded totals, rejected notifications.
    pub fn check(
        &self,
        got: &crate::reconcile::LedgerTotals,
        dead: &std::collections::BTreeMap<String, u64>,
    ) -> Vec<CheckRow> {
        let cny = |m: &std::collections::BTreeMap<String, u64>| m.get("CNY").copied().unwrap_or(0);
        let money = |minor| paynotify_shared::money::display_minor(minor, "CNY");
        let status = |s: &str| got.by_status.get(s).copied().unwrap_or(0);
        let others: u64 = got
            .by_status
            .iter()
            .filter(|(s, _)| !["PAID", "REFUNDED", "VOIDED"].contains(&s.as_str()))
            .map(|(_, n)| n)
            .sum();
        let reason = |r: &str| dead.get(r).copied().unwrap_or(0);
        let other_dead: u64 = dead
            .iter()
            .filter(|(r, _)| !["bad_signature", "untrusted_certificate"].contains(&r.as_str()))
            .map(|(_, n)| n)
            .sum();
        let row = |what, expected: String, got: String| CheckRow {
            what,
            expected,
            got,
        };
        vec![
            row(
                "PAID payments",
                self.expected_paid.to_string(),
                status("PAID").to_string(),
            ),
            row(
                "REFUNDED payments",
                self.expected_refunded.to_string(),
                status("REFUNDED").to_string(),
            ),
            row(
                "VOIDED payments",
                self.expected_voided.to_string(),
                status("VOIDED").to_string(),
            ),
            row("in any other status", "0".into(), others.to_string()),
            row(
                "paid total",
                money(self.expected_paid_minor),
                money(cny(&got.paid_minor)),
            ),
            row(
                "refunded total",
                money(self.expected_refunded_minor),
                money(cny(&got.refunded_minor)),
            ),
            row(
                "tampered -> bad_signature",
                self.tampered.to_string(),
                reason("bad_signature").to_string(),
            ),
            row(
                "forged -> untrusted_certificate",
                self.forged.to_string(),
                reason("untrusted_certificate").to_string(),
            ),
            row(
                "dead-lettered for another reason",
                "0".into(),
                other_dead.to_string(),
            ),
        ]
    }

    fn add(&mut self, d: Delivery) {
        self.sent += 1;
        match d {
            Delivery::Accepted(_) => self.accepted += 1,
            Delivery::Failed(_) => self.failed += 1,
        }
    }
}

/// Sends `mix.count` payments' worth of notifications. `forger`, when given,
/// signs a few notifications with an untrusted certificate.
pub async fn run_mix(sim: Arc<Simulator>, forger: Option<Arc<Simulator>>, mix: &Mix) -> Report {
    use rand::Rng;
    let permits = Arc::new(tokio::sync::Semaphore::new(mix.concurrency.max(1)));
    let interval =
        (mix.rate > 0.0).then(|| Duration::from_secs_f64(mix.concurrency.max(1) as f64 / mix.rate));
    let run_id = ulid::Ulid::new().to_string().to_lowercase();
    let mut tasks = tokio::task::JoinSet::new();
    let mut report = Report {
        sample_payment_ref: format!("{run_id}{:08}", 0),
        ..Report::default()
    };
    for i in 0..mix.count {
        let mut rng = rand::rng();
        let amount: u64 = rng.random_range(100..100_000);
        let roll: f64 = rng.random();
        let (refund, void) = (
            roll < mix.refunds,
            roll >= mix.refunds && roll < mix.refunds + mix.voids,
        );
        let partial = refund && rng.random_bool(0.5);
        let early = refund && rng.random_bool(mix.early_refunds.clamp(0.0, 1.0));
        let dup = rng.random_bool(mix.duplicates.clamp(0.0, 1.0));
        let tampered = rng.random_bool(mix.tamper.clamp(0.0, 1.0));
        report.expected_paid_minor += amount;
        match (refund, void) {
            (true, _) => {
                report.expected_refunded += 1;
                report.expected_refunded_minor += amount;
            }
            (_, true) => report.expected_voided += 1,
            _ => report.expected_paid += 1,
        }
        report.duplicate_deliveries += if dup { 7 } else { 0 };
        report.tampered += u64::from(tampered);
        let (sim, permits) = (sim.clone(), permits.clone());
        let query_id = format!("{run_id}{i:08}");
        let follow_up = mix.follow_up;
        tasks.spawn(async move {
            let mut permit = permits.clone().acquire_owned().await;
            let started = tokio::time::Instant::now();
            let mut out = Report::default();
            let purchase = sim.purchase(&query_id, amount);
            let mut refunds = Vec::new();
            if refund && partial {
                refunds.push(sim.refund(&query_id, &format!("{query_id}r1"), amount / 3));
                refunds.push(sim.refund(&query_id, &format!("{query_id}r2"), amount - amount / 3));
            } else if refund {
                refunds.push(sim.refund(&query_id, &format!("{query_id}r1"), amount));
            }
            if early {
                if let Some(first) = refunds.first() {
                    out.add(sim.send(first.clone()).await);
                }
            }
            // With a follow-up delay, one delivery now and the others later.
            let (now, later) = match (dup, follow_up) {
                (false, _) => (1, 0),
                (true, None) => (8, 0),
                (true, Some(_)) => (1, 7),
            };
            let deliver = |n: usize| {
                let handles: Vec<_> = (0..n)
                    .map(|_| {
                        let (s, b) = (sim.clone(), purchase.clone());
                        tokio::spawn(async move { s.send(b).await })
                    })
                    .collect();
                async move {
                    let mut d = Vec::new();
                    for h in handles {
                        d.push(h.await.unwrap_or(Delivery::Failed(0)));
                    }
                    d
                }
            };
            for d in deliver(now).await {
                out.add(d);
            }
            if let Some(delay) = follow_up {
                // Paced as without a delay; no sender is held while waiting.
                if let Some(interval) = interval {
                    tokio::time::sleep_until(started + interval).await;
                }
                drop(permit);
                tokio::time::sleep(delay).await;
                permit = permits.acquire_owned().await;
            }
            for d in deliver(later).await {
                out.add(d);
            }
            if tampered {
                out.add(sim.send_tampered(&purchase).await);
            }
            for (n, r) in refunds.into_iter().enumerate() {
                if !(early && n == 0) {
                    out.add(sim.send(r).await);
                }
            }
            if void {
                out.add(
                    sim.send(sim.void(&query_id, &format!("{query_id}v"), amount))
                        .await,
                );
            }
            if let Some(interval) = interval {
                tokio::time::sleep_until(started + interval).await;
            }
            drop(permit);
            out
        });
    }
    if let Some(forger) = forger {
        for i in 0..5 {
            let f = forger.clone();
            let q = format!("{run_id}forged{i}");
            tasks.spawn(async move {
                let mut out = Report {
                    forged: 1,
                    ..Report::default()
                };
                out.add(f.send(f.purchase(&q, 100)).await);
                out
            });
        }
    }
    while let Some(Ok(r)) = tasks.join_next().await {
        report.sent += r.sent;
        report.accepted += r.accepted;
        report.failed += r.failed;
        report.forged += r.forged;
    }
    report
}
