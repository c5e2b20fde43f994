//! A merchant's receiver of paynotify's outgoing events, as a merchant
//! would write one: it checks each request's Standard Webhooks signature
//! (with the project's verifier), deduplicates on `webhook-id`, and checks
//! that a payment's events arrive in order. The demo runs it; the delivery
//! tests make it misbehave (answer 500, drop the connection after
//! processing, answer too late, be down) and compare what it saw with the
//! ledger.
//!
//! HTTP/1.1 is spoken by hand, one request per connection, so that it can
//! drop a connection at the worst moment.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paynotify_shared::config::StandardWebhooksConfig;
use paynotify_shared::event::PaymentKey;
use paynotify_shared::outgoing::EventType;
use paynotify_shared::ports::{Ledger, LedgerError};
use paynotify_shared::scheme::standard_webhooks::StandardWebhooksVerifier;
use paynotify_shared::scheme::Inbound;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The largest request read.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// One request as received: its headers (names in lower case) and body.
pub type Request = (Vec<(String, String)>, Vec<u8>);

/// How the receiver answers its next requests.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Answer this many requests 500 without processing them.
    pub fail: u32,
    /// Process this many, then close the connection without an answer.
    pub drop_after_processing: u32,
    /// Wait this long before processing and answering this many.
    pub slow: u32,
    pub slow_for: Duration,
    /// Answer every request 410 Gone.
    pub gone: bool,
}

/// What the receiver has seen.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Each event once, by id.
    pub events: BTreeMap<String, Value>,
    /// Each payment's events in the order first received.
    pub by_payment: BTreeMap<String, Vec<Value>>,
    /// Requests whose id had been processed before.
    pub duplicates: u64,
    /// Events that arrived after a later event of their payment.
    pub order_violations: Vec<String>,
    /// Requests refused: signature, headers or body.
    pub rejected: Vec<String>,
    /// Every request, as received: headers and body.
    pub requests: Vec<Request>,
}

impl View {
    /// Each payment's statuses, in the order the receiver first heard its
    /// transitions (payments with none left out): what
    /// [`ledger_statuses`] gives for a ledger it heard all of.
    pub fn statuses(&self) -> BTreeMap<String, Vec<String>> {
        self.by_payment
            .iter()
            .map(|(k, events)| {
                let statuses: Vec<String> = events
                    .iter()
                    .filter(|e| e["type"] != EventType::NeedsAttention.as_str())
                    .map(|e| e["payment"]["status"].as_str().unwrap_or("?").to_owned())
                    .collect();
                (k.clone(), statuses)
            })
            .filter(|(_, statuses)| !statuses.is_empty())
            .collect()
    }
}

/// Each of `keys`' statuses after each of its transitions, in the ledger's
/// order (payments with none left out).
///
/// # Errors
/// The ledger's.
pub async fn ledger_statuses(
    ledger: &dyn Ledger,
    keys: impl IntoIterator<Item = PaymentKey>,
) -> Result<BTreeMap<String, Vec<String>>, LedgerError> {
    let mut out = BTreeMap::new();
    for key in keys {
        let statuses: Vec<String> = ledger
            .history(&key)
            .await?
            .into_iter()
            .filter_map(|h| h.status_after)
            .collect();
        if !statuses.is_empty() {
            out.insert(key.to_string(), statuses);
        }
    }
    Ok(out)
}

struct Shared {
    verifier: StandardWebhooksVerifier,
    behaviour: Mutex<Behaviour>,
    view: Mutex<View>,
    /// The last (version, sequence) processed per payment.
    last: Mutex<HashMap<String, (u64, u64)>>,
}

/// A running receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<CancellationToken>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Listens on `addr` (port 0: any) and checks signatures with `secret`
    /// (`whsec_…`).
    ///
    /// # Errors
    /// A secret that is not a key, or the address cannot be bound.
    pub async fn start(secret: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        // The verifier of a Standard Webhooks source; only its signature
        // check is used.
        let config: StandardWebhooksConfig = serde_json::from_value(serde_json::json!({
            "fields": {"event_type": "/type", "payment_ref": "/payment/reference",
                       "amount": "/payment/paid", "currency": "/payment/currency"},
            "events": {}
        }))?;
        let verifier = StandardWebhooksVerifier::new(&config, &[secret.to_owned()], &[], &[])?;
        let shared = Arc::new(Shared {
            verifier,
            behaviour: Mutex::new(Behaviour::default()),
            view: Mutex::new(View::default()),
            last: Mutex::new(HashMap::new()),
        });
        let mut r = Self {
            addr,
            shared,
            stop: None,
        };
        r.listen().await?;
        Ok(r)
    }

    async fn listen(&mut self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        self.stop = Some(stop.clone());
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    () = stop.cancelled() => return,
                };
                if let Ok((stream, _)) = conn {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _ = serve(stream, &shared).await;
                    });
                }
            }
        });
        Ok(())
    }

    /// Stops listening (connections are refused) until [`Receiver::restart`].
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
    }

    /// Listens again on the same address.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.listen().await
    }

    /// Changes how the next requests are answered.
    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.behaviour.lock().expect("receiver lock"));
    }

    /// What it has seen so far.
    pub fn view(&self) -> View {
        self.shared.view.lock().expect("receiver lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What to do with one request, decided when it arrives.
enum Act {
    Fail,
    Gone,
    Drop,
    Answer(Option<Duration>),
}

fn decide(b: &mut Behaviour) -> Act {
    if b.gone {
        Act::Gone
    } else if b.fail > 0 {
        b.fail -= 1;
        Act::Fail
    } else if b.drop_after_processing > 0 {
        b.drop_after_processing -= 1;
        Act::Drop
    } else if b.slow > 0 {
        b.slow -= 1;
        Act::Answer(Some(b.slow_for))
    } else {
        Act::Answer(None)
    }
}

async fn serve(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let Some((headers, body)) = read_request(&mut stream).await? else {
        return Ok(());
    };
    let act = decide(&mut shared.behaviour.lock().expect("receiver lock"));
    let status = match act {
        Act::Fail => 500,
        Act::Gone => 410,
        Act::Drop => {
            process(shared, headers, body);
            return Ok(());
        }
        Act::Answer(delay) => {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            process(shared, headers, body)
        }
    };
    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// Checks and records one request; the status to answer.
fn process(shared: &Shared, headers: Vec<(String, String)>, body: Vec<u8>) -> u16 {
    let mut view = shared.view.lock().expect("receiver lock");
    view.requests.push((headers.clone(), body.clone()));
    let inbound = Inbound {
        body: &body,
        headers: &headers,
        received_at: time::OffsetDateTime::now_utc(),
    };
    let id = match shared.verifier.authenticate(&inbound) {
        Ok(id) => id,
        Err(e) => {
            view.rejected.push(e.to_string());
            return 400;
        }
    };
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        view.rejected.push(format!("{id}: not JSON"));
        return 400;
    };
    if event["id"].as_str() != Some(id.as_str()) {
        view.rejected
            .push(format!("{id}: webhook-id differs from the event's id"));
        return 400;
    }
    if view.events.contains_key(&id) {
        view.duplicates += 1;
        return 200;
    }
    let key = event["payment"]["key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let position = (
        event["payment"]["version"].as_u64().unwrap_or(0),
        event["payment"]["sequence"].as_u64().unwrap_or(0),
    );
    let mut last = shared.last.lock().expect("receiver lock");
    if let Some(before) = last.get(&key) {
        if *before >= position {
            view.order_violations
                .push(format!("{id} of {key} at {position:?} after {before:?}"));
        }
    }
    let latest = position.max(last.get(&key).copied().unwrap_or((0, 0)));
    last.insert(key.clone(), latest);
    view.by_payment.entry(key).or_default().push(event.clone());
    view.events.insert(id, event);
    200
}

/// Reads one request: its headers and its body (`content-length` only).
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST_BYTES);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Some((headers, body)))
}
