//! The ledger port: payments, their events and parked events.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use paynotify_model::event::{EventKey, PaymentEvent, PaymentKey};
use paynotify_model::state::{PaymentState, PaymentStatus};

/// Ledger failures (all transient: the message is retried).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unavailable: {0}")]
    Unavailable(#[source] crate::Cause),
}

/// What `write` (or `apply`) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Everything in the write is durable.
    Applied,
    /// The incoming event key is already recorded or parked: nothing changed.
    Duplicate,
    /// A version is not the expected one: re-read and decide again.
    VersionConflict,
}

/// An event that arrived before the payment it refers to, kept in the ledger
/// until that payment arrives (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    pub event: PaymentEvent,
    pub notification_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub parked_at: OffsetDateTime,
    /// Set when the payment arrived and this event contradicted it: it stays
    /// here, unapplied, for `reconcile` and an operator.
    pub conflict: Option<String>,
}

impl ParkedEvent {
    /// Parked for longer than `alert_secs` at `now`: its payment is overdue.
    pub fn is_overdue(&self, now: OffsetDateTime, alert_secs: u64) -> bool {
        self.parked_at < now - time::Duration::seconds(alert_secs as i64)
    }
}

/// Parked events read at most for one report, gauge or check.
pub const PARKED_SCAN_LIMIT: usize = 10_000;

/// How many parked events need a person: waiting longer than the alert
/// bound, and contradicting the payment that arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParkedCounts {
    pub overdue: usize,
    pub conflicted: usize,
}

impl ParkedCounts {
    /// The counts of `parked` at `now`.
    pub fn of(parked: &[ParkedEntry], now: OffsetDateTime, alert_secs: u64) -> Self {
        Self {
            overdue: parked
                .iter()
                .filter(|p| p.parked.is_overdue(now, alert_secs))
                .count(),
            conflicted: parked
                .iter()
                .filter(|p| p.parked.conflict.is_some())
                .count(),
        }
    }
}

/// What the ledger holds under one payment key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentEntry {
    /// The payment; `None` before the payment itself has arrived.
    pub state: Option<PaymentState>,
    /// Guards every write under this key; 0 when nothing is stored.
    pub version: u64,
    /// Events waiting for the payment (and ones that conflicted with it).
    pub parked: Vec<ParkedEvent>,
    /// This key is a pre-authorization completion's own id: its events
    /// belong to that payment.
    pub alias_of: Option<PaymentKey>,
}

/// What [`Ledger::load_to_apply`] read: the entry under a payment key and
/// whether the event about to be applied is already recorded or parked there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    pub entry: PaymentEntry,
    /// The event key is recorded or parked under the key. Never wrongly
    /// true: a recorded or parked key is never removed (an unparked event is
    /// recorded).
    pub seen: bool,
}

/// How recent a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Every write acknowledged before the read began is in it.
    Latest,
    /// It may miss the most recent writes (a replica that lags; on DynamoDB
    /// an eventually consistent read, half the read units). For reads that
    /// lead to a write conditioned on the version read, which refuses a
    /// write planned on a stale entry.
    MayLag,
}

/// One event recorded by a write.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub event: PaymentEvent,
    pub notification_id: String,
    /// The payment's status after this event, when it changed it.
    pub status_after: Option<PaymentStatus>,
    /// Where the event was parked, when it was.
    pub unparked_from: Option<PaymentKey>,
}

/// A completion's id made an alias of the payment, in the same write.
#[derive(Debug, Clone)]
pub struct AliasWrite {
    pub key: PaymentKey,
    pub expected_version: u64,
}

/// One atomic change under one payment key (and the alias keys it creates).
#[derive(Debug, Clone)]
pub struct LedgerWrite {
    pub key: PaymentKey,
    pub expected_version: u64,
    /// The incoming notification's event: recorded (with its status) or parked.
    pub incoming: Incoming,
    /// The new state, when it changes.
    pub state: Option<PaymentState>,
    /// Parked events applied in this write, in order, after the incoming one.
    pub unparked: Vec<RecordedEvent>,
    /// Parked events (under `key` or an alias key) that contradict the
    /// payment: kept parked, with the reason.
    pub conflicts: Vec<ParkedEntry>,
    pub aliases: Vec<AliasWrite>,
}

impl LedgerWrite {
    /// Whether this write raises the version under `key`: every write does,
    /// except one that only records the incoming event.
    pub fn bumps_version(&self) -> bool {
        self.state.is_some()
            || matches!(self.incoming, Incoming::Park(_))
            || !self.unparked.is_empty()
            || !self.conflicts.is_empty()
            || !self.aliases.is_empty()
    }
}

/// What happens to the incoming event.
#[derive(Debug, Clone)]
pub enum Incoming {
    Record(RecordedEvent),
    Park(ParkedEvent),
    /// No incoming event: the write applies events still parked for a
    /// payment whose last write moved as many as one write takes
    /// ([`MAX_MOVES_PER_WRITE`]).
    Nothing,
}

impl Incoming {
    /// The incoming event, if there is one.
    pub fn event(&self) -> Option<&PaymentEvent> {
        match self {
            Self::Record(r) => Some(&r.event),
            Self::Park(p) => Some(&p.event),
            Self::Nothing => None,
        }
    }
}

/// The most parked events one ledger write moves (unparks, or keeps parked
/// with a conflict) plus the completion aliases it writes. DynamoDB takes
/// 100 items in a transaction (the payment's item, an overflow item and
/// one per event moved or alias written) and 400 KB in the overflow item
/// that holds the records of one write; the rest of a payment's parked
/// events apply in the writes that follow.
pub const MAX_MOVES_PER_WRITE: usize = 64;

/// One recorded event of a payment, for `txn get`.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub event_key: String,
    pub notification_id: String,
    pub kind: String,
    pub outcome: String,
    pub amount_minor: u64,
    pub currency: String,
    /// The payment's status after this event, when it changed it.
    pub status_after: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    /// The full event as recorded, for `reconcile`.
    #[serde(skip)]
    pub event: Option<PaymentEvent>,
}

/// A parked event with its payment key, as listed for reports.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedEntry {
    pub payment_key: PaymentKey,
    #[serde(flatten)]
    pub parked: ParkedEvent,
}

/// What a payment search asks: every filter given must hold.
#[derive(Debug, Clone, Default)]
pub struct PaymentSearch {
    pub source: Option<String>,
    /// Only with `source`.
    pub merchant: Option<String>,
    pub status: Option<PaymentStatus>,
    /// Last written at or after.
    pub updated_from: Option<OffsetDateTime>,
    /// Last written before.
    pub updated_to: Option<OffsetDateTime>,
    /// Where the previous page ended.
    pub after: Option<SearchCursor>,
    /// At most this many payments in the page.
    pub limit: usize,
}

impl PaymentSearch {
    /// The start of the payment keys the search's source and merchant
    /// select (`source#` or `source#merchant#`; a merchant alone selects
    /// nothing by itself).
    pub fn key_prefix(&self) -> Option<String> {
        match (&self.source, &self.merchant) {
            (Some(s), Some(m)) => Some(format!("{s}#{m}#")),
            (Some(s), None) => Some(format!("{s}#")),
            _ => None,
        }
    }
}

/// Where a page of a search ended: the key of the last item the store
/// looked at (a payment's, or another item's of the same table), opaque
/// to callers ([`SearchCursor::encode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchCursor {
    pub pk: String,
    pub sk: String,
}

impl SearchCursor {
    /// base64url of `pk`, a newline and `sk`.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}\n{}", self.pk, self.sk))
    }

    /// The cursor `text` encodes; `None` for anything [`SearchCursor::encode`]
    /// does not give.
    pub fn decode(text: &str) -> Option<Self> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let (pk, sk) = String::from_utf8(bytes)
            .ok()?
            .split_once('\n')
            .map(|(p, s)| (p.to_owned(), s.to_owned()))?;
        (!pk.is_empty() && !sk.is_empty()).then_some(Self { pk, sk })
    }
}

/// One payment a search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPayment {
    pub state: PaymentState,
    /// When its item was last written.
    pub updated_at: OffsetDateTime,
    pub order_id: Option<String>,
}

/// One page of a search: the payments found, and where to go on from
/// (`None`: the search is done).
#[derive(Debug, Clone, Default)]
pub struct PaymentPage {
    pub payments: Vec<FoundPayment>,
    pub next: Option<SearchCursor>,
}

/// The payment ledger.
///
/// # Contract
/// - `write` is atomic: all of it or nothing. It is refused as `Duplicate`
///   when the incoming event key is already recorded (an incoming record) or
///   parked (an incoming park) under `key` (checked first; a caller that
///   loaded the entry sees the other kind in it, guarded by the version), and as `VersionConflict` unless the version stored
///   under `key` (0 when nothing is) and under each alias key equals the
///   expected one. Every write raises the version under `key` by one, except
///   one that only records an event; an alias key's version is raised too.
/// - A parked event is stored under `key` until a write names it in
///   `unparked` (recorded as an event, removed from the parked ones) or in
///   `conflicts` (kept parked with the reason). A write that names an event
///   no longer parked there (planned on a view of the parked events older
///   than the version it read) is refused as `VersionConflict`.
/// - `load` returns the state, version, parked events and alias of a key as
///   of one point in time.
/// - `history` lists a payment's recorded events in the order they were applied.
/// - `contains_event` is true once an event key is recorded or parked.
/// - `load_to_apply` is `load` and `contains_event` for one event; with
///   [`Freshness::MayLag`] its entry may be older than the latest write (a
///   version conflict then refuses any write planned on it) and `seen` may
///   be false for an event recorded by one of the latest writes; with
///   [`Freshness::Latest`] it is as fresh as `load`.
/// - `parked_before` lists parked events parked before `t` (conflicted ones
///   included), oldest first, at most `limit`.
/// - `events_between` lists the recorded events of `source` whose PSP time
///   lies in `[from, to)`, oldest first (events without a PSP time are not
///   listed).
/// - `payments_by_order` lists the keys of the payments one of whose
///   recorded events names `order_id` as the merchant's order (an event
///   that creates a payment: [`paynotify_model::event::order_id_of`]), of
///   any source and merchant, in key order, at most `limit` (which ones,
///   when more name it, is the store's choice). It may lag
///   the latest writes by a moment (on DynamoDB it reads an index, which
///   is eventually consistent). An id no event carries (empty, or longer
///   than [`paynotify_model::event::MAX_ORDER_ID_BYTES`]) finds none.
/// - `search_payments` gives one page of the payments (keys holding a
///   state: not an alias, not a key with only parked events) that match
///   every filter of the search, at most `limit`, and the cursor of the
///   next page. Following the cursors from none to the end lists each
///   payment that matched throughout exactly once, in an order the store
///   chooses; a page may hold fewer than `limit`, even none, while more
///   follow (on DynamoDB a page reads a bounded part of the table).
/// - `remove_parked` takes one parked event out of the ledger (an operator
///   resolving it) and returns it; `None` when it is not parked under `key`
///   (applied meanwhile, or removed before). A write planned on a view that
///   still showed it is refused as `VersionConflict`, as for any event no
///   longer parked.
/// - `recorded_since` counts the events recorded at or after `since` (what
///   the workers applied, recorded or resolved into the ledger), where the
///   store keeps an index by that time; `None` where it does not
///   (DynamoDB: the operator's dashboard counts them instead), never a scan.
#[async_trait]
pub trait Ledger: Send + Sync {
    async fn load(&self, key: &PaymentKey) -> Result<PaymentEntry, LedgerError>;
    async fn write(&self, write: &LedgerWrite) -> Result<ApplyOutcome, LedgerError>;
    async fn history(&self, key: &PaymentKey) -> Result<Vec<EventRecord>, LedgerError>;
    async fn recorded_since(&self, since: OffsetDateTime) -> Result<Option<u64>, LedgerError>;
    /// Whether the event key is already recorded (or parked) for this payment.
    async fn contains_event(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<bool, LedgerError>;
    async fn parked_before(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<ParkedEntry>, LedgerError>;
    async fn events_between(
        &self,
        source: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<EventRecord>, LedgerError>;
    async fn remove_parked(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<Option<ParkedEvent>, LedgerError>;
    async fn payments_by_order(
        &self,
        order_id: &str,
        limit: usize,
    ) -> Result<Vec<PaymentKey>, LedgerError>;
    async fn search_payments(&self, search: &PaymentSearch) -> Result<PaymentPage, LedgerError>;
    /// Why this store can no longer work in this process (a writer thread
    /// that ended), if so: readiness fails and the process stops.
    fn fatal(&self) -> Option<String> {
        None
    }

    /// What a worker reads before applying `event_key` under `key`: one
    /// read where the store can (two here).
    async fn load_to_apply(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
        _freshness: Freshness,
    ) -> Result<Loaded, LedgerError> {
        let entry = self.load(key).await?;
        let seen = self.contains_event(key, event_key).await?;
        Ok(Loaded { entry, seen })
    }
}

/// Conveniences over [`Ledger`], written once for every ledger (and every
/// wrapper of one) from its required methods.
#[async_trait]
pub trait LedgerExt: Ledger {
    /// The payment's state, if it has arrived.
    async fn get_payment(&self, key: &PaymentKey) -> Result<Option<PaymentState>, LedgerError> {
        Ok(self.load(key).await?.state)
    }

    /// Records `event` and, when given, stores `new_state` (whose version
    /// must be `expected_version + 1`): a write with nothing parked.
    async fn apply(
        &self,
        event: &PaymentEvent,
        notification_id: &str,
        new_state: Option<&PaymentState>,
        expected_version: u64,
    ) -> Result<ApplyOutcome, LedgerError> {
        self.write(&LedgerWrite {
            key: event.payment_key.clone(),
            expected_version,
            incoming: Incoming::Record(RecordedEvent {
                event: event.clone(),
                notification_id: notification_id.to_owned(),
                status_after: new_state.map(|s| s.status),
                unparked_from: None,
            }),
            state: new_state.cloned(),
            unparked: Vec::new(),
            conflicts: Vec::new(),
            aliases: Vec::new(),
        })
        .await
    }
}

impl<L: Ledger + ?Sized> LedgerExt for L {}
