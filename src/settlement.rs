//! UnionPay settlement files: fetch a day's file (a signed request to the
//! file host; request and answer archived under `outbound/`, the file itself
//! under `settlement/`) and reconcile it with the ledger.
//!
//! The settlement day (清算日) runs from 23:00 the day before to 23:00,
//! Beijing time. A ledger event belongs to day D when UnionPay's
//! notification said `settleDate` D, or, without one, when its transaction
//! time lies in D's window. Transactions are matched by UnionPay's
//! `queryId`.

use std::collections::{BTreeMap, HashSet};

use paynotify_shared::event::{EventKind, EventOutcome, PaymentEvent, PaymentKey};
use paynotify_shared::ports::{Archive, ArchiveError, Ledger, LedgerError};
use paynotify_shared::scheme::unionpay::{
    file_request, inflate_file_content, parse_zm, parse_zme, unzip, zm_file, zme_file,
    SettlementError, ZmRecord, ZmeRecord,
};
use paynotify_worker::query::{Querier, QueryError};
use serde::Serialize;
use time::macros::{offset, time};
use time::{Date, OffsetDateTime};

/// Why a settlement file could not be fetched or read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("UnionPay refused the file request: {code} {message}")]
    Refused { code: String, message: String },
    #[error(transparent)]
    File(#[from] SettlementError),
    #[error("archive: {0}")]
    Archive(#[from] ArchiveError),
    #[error("no settlement file of {source_name} for {date} in the archive; run `paynotify unionpay settlement fetch` first")]
    NotArchived { source_name: String, date: Date },
}

/// A fetched file.
#[derive(Debug, Clone, Serialize)]
pub struct Fetched {
    pub exchange_id: String,
    /// Where the ZIP archive UnionPay sent is kept.
    pub archive_key: String,
    pub file_name: String,
    /// Records of its ZM file (settled transactions) and ZME file
    /// (corrections).
    pub records: usize,
    pub corrections: usize,
}

/// `settlement/source={source}/date={YYYY-MM-DD}/`: a day's fetched files.
pub fn settlement_prefix(source: &str, date: Date) -> String {
    format!("settlement/source={source}/date={date}/")
}

/// Fetches the settlement file of `merchant` at `source` for `date`.
///
/// # Errors
/// [`FetchError`].
pub async fn fetch(
    querier: &Querier,
    source: &str,
    merchant: &str,
    date: Date,
) -> Result<Fetched, FetchError> {
    let gw = querier
        .gateways
        .get(source)
        .ok_or_else(|| QueryError::NoGateway(source.to_owned()))?;
    let fields = file_request(&gw.key, merchant, date, OffsetDateTime::now_utc())
        .map_err(QueryError::Request)?;
    let url = format!("{}/", gw.config.file_url.trim_end_matches('/'));
    let (request, response) = querier.exchange(gw, &url, &fields).await?;
    let answer = querier.verified(source, &response)?;
    let code = answer.get("respCode").unwrap_or("");
    if code != "00" {
        return Err(FetchError::Refused {
            code: code.to_owned(),
            message: answer.get("respMsg").unwrap_or("").to_owned(),
        });
    }
    let zip = inflate_file_content(answer.get("fileContent").unwrap_or(""))?;
    // Read before it is kept: a file that cannot be reconciled is an error
    // now, not tomorrow.
    let file = read_file(&zip)?;
    let archive_key = format!("{}{}.zip", settlement_prefix(source, date), request.id);
    querier.archive.put(&archive_key, &zip).await?;
    Ok(Fetched {
        exchange_id: request.id,
        archive_key,
        file_name: answer.get("fileName").unwrap_or("").to_owned(),
        records: file.records.len(),
        corrections: file.corrections.len(),
    })
}

/// What a day's settlement file holds.
#[derive(Debug, Clone, Default)]
pub struct SettlementFile {
    /// The ZM file: every settled transaction.
    pub records: Vec<ZmRecord>,
    /// The ZME file: UnionPay's corrections (errors, adjustments,
    /// chargebacks); empty for a bare ZM file.
    pub corrections: Vec<ZmeRecord>,
}

/// Reads a settlement file: a ZIP as UnionPay sends it (or as `fetch`
/// archived it), or a bare ZM file.
///
/// # Errors
/// A file that is neither, or a malformed record.
pub fn read_file(bytes: &[u8]) -> Result<SettlementFile, SettlementError> {
    if bytes.starts_with(b"PK") {
        let files = unzip(bytes)?;
        Ok(SettlementFile {
            records: parse_zm(zm_file(&files)?)?,
            corrections: zme_file(&files)
                .map(parse_zme)
                .transpose()?
                .unwrap_or_default(),
        })
    } else {
        Ok(SettlementFile {
            records: parse_zm(bytes)?,
            corrections: Vec::new(),
        })
    }
}

/// The newest file of `date` that `fetch` archived.
///
/// # Errors
/// `NotArchived` when there is none.
pub async fn archived_file(
    archive: &dyn Archive,
    source: &str,
    date: Date,
) -> Result<SettlementFile, FetchError> {
    let keys = archive
        .list(&settlement_prefix(source, date), None, None)
        .await?;
    let Some(newest) = keys.last() else {
        return Err(FetchError::NotArchived {
            source_name: source.to_owned(),
            date,
        });
    };
    Ok(read_file(&archive.get(newest).await?)?)
}

/// One disagreement between the file and the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// `in_file_not_in_ledger` (a lost notification: a status query by
    /// `queryId` fixes it), `in_ledger_not_in_file`, `amount_differs`,
    /// `kind_differs`.
    pub class: &'static str,
    pub query_id: String,
    pub order_id: String,
    pub file_amount: Option<u64>,
    pub ledger_amount: Option<u64>,
    pub detail: String,
}

/// A correction UnionPay recorded (a ZME record) and the transaction it
/// corrects, when the day's ZM file holds it (by trace number and time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Correction {
    #[serde(flatten)]
    pub record: ZmeRecord,
    /// The corrected transaction's `queryId` and `orderId`.
    pub query_id: Option<String>,
    pub order_id: Option<String>,
}

/// What a reconciliation found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub source: String,
    pub merchant: String,
    pub date: Date,
    pub file_records: usize,
    pub ledger_events: usize,
    pub matched: usize,
    pub mismatches: Vec<Mismatch>,
    /// Money UnionPay moved by correction, without a notification: a
    /// person must look at each.
    pub corrections: Vec<Correction>,
}

impl Report {
    /// No mismatch and no correction.
    pub fn is_clean(&self) -> bool {
        self.mismatches.is_empty() && self.corrections.is_empty()
    }
}

/// `[D-1 23:00, D 23:00)` Beijing time.
pub fn window(date: Date) -> (OffsetDateTime, OffsetDateTime) {
    let end = date.with_time(time!(23:00)).assume_offset(offset!(+8));
    (end - time::Duration::DAY, end)
}

fn moves_money(e: &PaymentEvent) -> bool {
    e.outcome == EventOutcome::Succeeded
        && matches!(
            e.kind,
            EventKind::Payment | EventKind::Capture | EventKind::Refund | EventKind::Void
        )
}

/// Compares the file's records of `date` with the ledger's events of
/// `merchant` at `source`, and lists its corrections.
///
/// # Errors
/// When the ledger cannot be read.
pub async fn reconcile(
    ledger: &dyn Ledger,
    source: &str,
    merchant: &str,
    date: Date,
    file: &SettlementFile,
) -> Result<Report, LedgerError> {
    let records = &file.records;
    let (from, to) = window(date);
    let day = date.to_string();
    // A margin of a day either side: an event may carry a settleDate other
    // than its transaction time's window.
    let mut by_query_id: BTreeMap<String, PaymentEvent> = BTreeMap::new();
    let mut in_window = Vec::new();
    for r in ledger
        .events_between(source, from - time::Duration::DAY, to + time::Duration::DAY)
        .await?
    {
        let Some(e) = r.event else { continue };
        if e.merchant != merchant || !moves_money(&e) {
            continue;
        }
        let belongs = match &e.settle_date {
            Some(d) => *d == day,
            None => e.psp_time.is_some_and(|t| t >= from && t < to),
        };
        if let Some(q) = &e.psp_txn_id {
            if belongs {
                in_window.push(q.clone());
            }
            by_query_id.insert(q.clone(), e);
        }
    }
    let mut matched = 0;
    let mut seen = HashSet::new();
    let mut mismatches = Vec::new();
    for rec in records.iter().filter(|r| r.mer_id == merchant) {
        seen.insert(rec.query_id.clone());
        let found = match by_query_id.get(&rec.query_id) {
            Some(e) => Some(e.clone()),
            None => find_in_history(ledger, source, merchant, rec).await?,
        };
        let mismatch = |class, ledger_amount, detail: String| Mismatch {
            class,
            query_id: rec.query_id.clone(),
            order_id: rec.order_id.clone(),
            file_amount: Some(rec.amount_minor),
            ledger_amount,
            detail,
        };
        match found {
            None => mismatches.push(mismatch(
                "in_file_not_in_ledger",
                None,
                format!(
                    "line {}: {} {} settled, never applied; `paynotify unionpay query --source {source} --query-id {}` asks UnionPay",
                    rec.line, rec.trade_code, rec.txn_type, rec.query_id
                ),
            )),
            Some(e) if rec.kind() != Some(e.kind) => mismatches.push(mismatch(
                "kind_differs",
                Some(e.amount.minor),
                format!("line {}: the file says txnType {}, the ledger {}", rec.line, rec.txn_type, e.kind.as_str()),
            )),
            Some(e) if e.amount.minor != rec.amount_minor => mismatches.push(mismatch(
                "amount_differs",
                Some(e.amount.minor),
                format!("line {}: the file settles {}, the ledger recorded {}", rec.line, rec.amount_minor, e.amount),
            )),
            Some(_) => matched += 1,
        }
    }
    for q in &in_window {
        if seen.contains(q) {
            continue;
        }
        let e = &by_query_id[q];
        mismatches.push(Mismatch {
            class: "in_ledger_not_in_file",
            query_id: q.clone(),
            order_id: String::new(),
            file_amount: None,
            ledger_amount: Some(e.amount.minor),
            detail: format!(
                "{} {} of {} in the ledger, not settled on {day}",
                e.kind.as_str(),
                e.amount,
                e.payment_key
            ),
        });
    }
    let corrections = file
        .corrections
        .iter()
        .filter(|c| c.mer_id == merchant)
        .map(|c| {
            let corrected = records
                .iter()
                .find(|r| r.trace_no == c.orig_trace_no && r.trace_time == c.orig_trace_time);
            Correction {
                record: c.clone(),
                query_id: corrected.map(|r| r.query_id.clone()),
                order_id: corrected.map(|r| r.order_id.clone()),
            }
        })
        .collect();
    Ok(Report {
        source: source.to_owned(),
        merchant: merchant.to_owned(),
        date,
        file_records: records.len(),
        ledger_events: in_window.len(),
        matched,
        mismatches,
        corrections,
    })
}

/// The ledger event of a record outside the time margin, by its payment's
/// key (a purchase is its own payment; a refund or void names it).
async fn find_in_history(
    ledger: &dyn Ledger,
    source: &str,
    merchant: &str,
    rec: &ZmRecord,
) -> Result<Option<PaymentEvent>, LedgerError> {
    let payment = rec.orig_query_id.as_deref().unwrap_or(&rec.query_id);
    let key = PaymentKey::new(source, merchant, payment);
    Ok(ledger
        .history(&key)
        .await?
        .into_iter()
        .filter_map(|r| r.event)
        .find(|e| e.psp_txn_id.as_deref() == Some(rec.query_id.as_str()) && moves_money(e)))
}
