//! The demo's merchant side: a receiver of paynotify's outgoing events that
//! verifies their signatures and deduplicates, as a merchant's order
//! service would, with a few answers lost on the way (each then redelivered
//! with the same id). After the run, its view is compared with the ledger.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use paynotify::receiver::Receiver;
use paynotify_shared::backend::Backends;
use paynotify_shared::event::PaymentKey;
use paynotify_shared::ports::{DeliveryFilter, DeliveryStatus};

const ENDPOINT: &str = "merchant";

/// The receiver and the configuration that delivers to it.
pub struct MerchantSide {
    receiver: Receiver,
    /// `[deliveries]` for the demo's configuration.
    pub toml: String,
    backlog: bool,
}

/// What the receiver ended up with.
pub struct Outcome {
    events: usize,
    requests: usize,
    duplicates: u64,
    order_violations: usize,
    rejected: usize,
    equals_ledger: bool,
    delivered_in: Duration,
    /// Recorded in the ledger to delivered, p50 and p99.
    lag_ms: (f64, f64),
    /// Received by ingest (the notification id's time) to delivered.
    end_to_end_ms: (f64, f64),
    /// Events delivered per second, first delivery to last.
    per_sec: f64,
}

impl MerchantSide {
    /// Starts the receiver with a fresh secret, written under `pki_dir`.
    ///
    /// # Errors
    /// The secret cannot be written or the receiver cannot listen.
    pub async fn start(pki_dir: &Path, backlog: bool) -> anyhow::Result<Self> {
        let key: [u8; 32] = rand::random();
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        std::fs::write(pki_dir.join("merchant-receiver.whsec"), &secret)?;
        let receiver = Receiver::start(&secret, "127.0.0.1:0".parse()?).await?;
        // A few answers lost after the receiver processed them (not while
        // the deliverer's pace is measured).
        if !backlog {
            receiver.set(|b| b.drop_after_processing = 5);
        }
        let toml = format!(
            "[deliveries]\npoll_ms = 50\nretry_schedule_secs = [1, 1, 2, 5, 10, 30]\n\n\
             [[deliveries.endpoints]]\nname = \"{ENDPOINT}\"\nurl = \"http://{}/paynotify-events\"\n\
             secrets = [\"file:pki/merchant-receiver.whsec\"]\n\
             allow_insecure_http = true\nallow_private_addresses = true\n\
             max_requests_per_sec = 10000\n",
            receiver.addr
        );
        Ok(Self {
            receiver,
            toml,
            backlog,
        })
    }

    /// With `--delivery-backlog`: holds every delivery until the traffic is
    /// applied, so that the deliverer's own pace is measured.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn hold(&self, backends: &Backends) -> anyhow::Result<()> {
        if let (true, Some(store)) = (self.backlog, backends.deliveries.as_ref()) {
            store
                .set_disabled(ENDPOINT, Some("demo: a backlog first"))
                .await?;
        }
        Ok(())
    }

    /// Waits (up to `within`) until every outgoing event is delivered, then
    /// compares the receiver's view with the ledger.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn settle(&self, backends: &Backends, within: Duration) -> anyhow::Result<Outcome> {
        let store = backends
            .deliveries
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no outbox on this backend"))?;
        if self.backlog {
            store.set_disabled(ENDPOINT, None).await?;
        }
        let started = Instant::now();
        while !store.caught_up(ENDPOINT).await? && started.elapsed() <= within {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let delivered_in = started.elapsed();
        let outbox = store.outbox_after(0, usize::MAX >> 2).await?;
        let view = self.receiver.view();
        // The ledger's transitions, payment by payment, beside what the
        // receiver heard.
        let keys: std::collections::BTreeSet<&str> =
            outbox.iter().map(|r| r.payment_key.as_str()).collect();
        let ledger = paynotify::receiver::ledger_statuses(
            backends.ledger.as_ref(),
            keys.into_iter().map(PaymentKey::from_stored),
        )
        .await?;
        let heard = view.statuses();
        let delivered = store
            .list(&DeliveryFilter {
                endpoint: Some(ENDPOINT.into()),
                status: Some(DeliveryStatus::Delivered),
                limit: 1_000_000,
                ..DeliveryFilter::default()
            })
            .await?;
        let ms = |d: time::Duration| d.as_seconds_f64() * 1e3;
        let mut lags = Vec::new();
        let mut end_to_end = Vec::new();
        let (mut first, mut last) = (None, None);
        for d in &delivered {
            let Some(at) = d.delivered_at else { continue };
            first = Some(first.map_or(at, |f: time::OffsetDateTime| f.min(at)));
            last = Some(last.map_or(at, |l: time::OffsetDateTime| l.max(at)));
            lags.push(ms(at - d.record.recorded_at));
            // A notification id is a ULID: its first 48 bits are when
            // ingest received it.
            let event: serde_json::Value = serde_json::from_str(&d.record.body)?;
            if let Some(id) = event["cause"]["notification_id"]
                .as_str()
                .and_then(|s| ulid::Ulid::from_string(s).ok())
            {
                let received = time::OffsetDateTime::UNIX_EPOCH
                    + time::Duration::milliseconds(id.timestamp_ms() as i64);
                end_to_end.push(ms(at - received));
            }
        }
        let span = match (first, last) {
            (Some(f), Some(l)) => (l - f).as_seconds_f64(),
            _ => 0.0,
        };
        Ok(Outcome {
            events: view.events.len(),
            requests: view.requests.len(),
            duplicates: view.duplicates,
            order_violations: view.order_violations.len(),
            rejected: view.rejected.len(),
            equals_ledger: heard == ledger && view.events.len() == outbox.len(),
            delivered_in,
            lag_ms: percentiles(&mut lags),
            end_to_end_ms: percentiles(&mut end_to_end),
            per_sec: if span > 0.0 {
                delivered.len() as f64 / span
            } else {
                0.0
            },
        })
    }
}

impl Outcome {
    /// Whether the receiver heard exactly the ledger, in order.
    pub fn ok(&self) -> bool {
        self.equals_ledger && self.order_violations == 0 && self.rejected == 0
    }

    /// The summary lines.
    pub fn print(&self) {
        println!(
            "merchant receiver        {:>8} events, each once ({} requests, {} redelivered after a lost answer and dropped as duplicates)",
            self.events, self.requests, self.duplicates
        );
        println!(
            "                         {} order violations, {} bad signatures; its view {} the ledger's transitions ({:.1} s to finish)",
            self.order_violations,
            self.rejected,
            if self.equals_ledger { "equals" } else { "DIFFERS FROM" },
            self.delivered_in.as_secs_f64()
        );
        println!(
            "ledger -> merchant       p50 {:.1} ms, p99 {:.1} ms (recorded to delivered); \
             from ingest's receipt p50 {:.1} ms, p99 {:.1} ms",
            self.lag_ms.0, self.lag_ms.1, self.end_to_end_ms.0, self.end_to_end_ms.1
        );
        println!(
            "delivery throughput      {:>8.0} events/s (first delivery to last)",
            self.per_sec
        );
    }
}

/// p50 and p99 of `values`.
fn percentiles(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let i = ((values.len() as f64 * p) as usize).min(values.len().saturating_sub(1));
        values.get(i).copied().unwrap_or(0.0)
    };
    (at(0.5), at(0.99))
}
