//! UnionPay's daily settlement file (对账文件, `txnType=76`): the request,
//! the decoding of its `fileContent` (base64 of zlib of a ZIP archive) and the
//! fixed-width ZM records (商户交易明细) inside.
//!
//! ZM layout (UnionPay's file interface specification §6.1, as the official
//! SDK's `parseZMFile` reads it): 42 fields of fixed byte widths, each
//! followed by one separator byte, GBK text, one record per line, 607 bytes
//! (read by offsets: a line need only reach the last field read).
//! Only the fields a reconciliation needs are kept; the card number field is
//! never read.

use std::io::{Read, Write};

use base64::Engine;
use time::{Date, OffsetDateTime};

use super::error::VerifyError;
use super::fields::Fields;
use super::query::{txn_time, DEFAULT_BIZ_TYPE};
use super::sign::SigningKey;
use crate::event::EventKind;

mod file;

pub use file::*;

/// Byte widths of the 42 ZM fields.
pub const ZM_WIDTHS: [usize; 42] = [
    3, 11, 11, 6, 10, 19, 12, 4, 2, 21, 2, 32, 2, 6, 10, 13, 13, 4, 15, 2, 2, 6, 2, 4, 32, 1, 21,
    15, 1, 15, 32, 13, 13, 8, 32, 13, 13, 12, 2, 1, 32, 98,
];

/// Bytes in one ZM record: every field and the separator after all but the last.
pub const ZM_RECORD_LEN: usize = reach(&ZM_WIDTHS, ZM_WIDTHS.len() - 1);

/// Bytes from the start of a record laid out by `widths` to the end of
/// field `last`.
const fn reach(widths: &[usize], last: usize) -> usize {
    let mut total = 0;
    let mut i = 0;
    while i < last {
        total += widths[i] + 1;
        i += 1;
    }
    total + widths[last]
}

/// The shortest line a ZM record can be read from: up to the end of the
/// last field paynotify reads (the merchant id). UnionPay's SDK slices a
/// record by these offsets and never checks its length, so a line that lost
/// its trailing spaces or carries more bytes reads the same.
pub const ZM_MIN_RECORD_LEN: usize = reach(&ZM_WIDTHS, field::MER_ID);

/// ZM field numbers (0-based) paynotify reads.
mod field {
    pub const TRADE_CODE: usize = 0;
    pub const TRACE_NO: usize = 3;
    pub const TRACE_TIME: usize = 4;
    pub const AMOUNT: usize = 6;
    pub const QUERY_ID: usize = 9;
    pub const ORDER_ID: usize = 11;
    pub const TXN_TYPE: usize = 19;
    pub const TXN_SUB_TYPE: usize = 20;
    pub const BIZ_TYPE: usize = 21;
    pub const ORIG_QUERY_ID: usize = 26;
    pub const MER_ID: usize = 27;
}

/// Where field `index` of a record laid out by `widths` starts.
fn offset_in(widths: &[usize], index: usize) -> usize {
    widths[..index].iter().map(|w| w + 1).sum()
}

/// Byte widths of the 22 ZME fields (商户差错交易明细, the official SDK's
/// `parseZMEFile`): error transactions, adjustments and chargebacks, each
/// naming the transaction it corrects by that one's trace number and time.
pub const ZME_WIDTHS: [usize; 22] = [
    3, 11, 11, 6, 10, 19, 12, 4, 2, 2, 6, 10, 4, 12, 13, 13, 15, 15, 1, 12, 2, 135,
];

/// ZME field numbers (0-based) paynotify reads.
mod zme_field {
    pub const TRADE_CODE: usize = 0;
    pub const TRACE_NO: usize = 3;
    pub const TRACE_TIME: usize = 4;
    pub const AMOUNT: usize = 6;
    pub const ORIG_TRACE_NO: usize = 10;
    pub const ORIG_TRACE_TIME: usize = 11;
    pub const ORIG_SETTLE_DATE: usize = 12;
    pub const ORIG_AMOUNT: usize = 13;
    pub const MERCHANT_FEE: usize = 14;
    pub const SETTLE_AMOUNT: usize = 15;
    pub const MER_ID: usize = 17;
}

/// The shortest line a ZME record can be read from: up to the end of the
/// merchant id.
pub const ZME_MIN_RECORD_LEN: usize = reach(&ZME_WIDTHS, zme_field::MER_ID);

/// Why a settlement file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettlementError {
    #[error("fileContent is not valid base64")]
    Base64,
    #[error("fileContent is not zlib data: {0}")]
    Zlib(String),
    #[error("fileContent is not a ZIP archive: {0}")]
    Zip(String),
    #[error("the archive holds no ZM file (names: {0:?})")]
    NoZmFile(Vec<String>),
    #[error("line {line}: {why}")]
    Record { line: usize, why: String },
}

/// One settled transaction of a ZM file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ZmRecord {
    /// 1-based line in the file.
    pub line: usize,
    /// 交易代码, e.g. `S22` consumption, `S30` return.
    pub trade_code: String,
    pub trace_no: String,
    /// 交易传输时间, `MMDDhhmmss`.
    pub trace_time: String,
    /// 交易金额 in fen.
    pub amount_minor: u64,
    pub query_id: String,
    pub order_id: String,
    pub txn_type: String,
    pub txn_sub_type: String,
    pub biz_type: String,
    /// 原交易查询流水号: the original transaction of a refund or void.
    pub orig_query_id: Option<String>,
    pub mer_id: String,
}

/// One record of a ZME file: UnionPay corrected, adjusted or charged back a
/// transaction (money that moved without a notification). Amounts are
/// kept as written: the fee and the settled amount carry a sign letter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ZmeRecord {
    /// 1-based line in the file.
    pub line: usize,
    /// 交易代码 of the correction.
    pub trade_code: String,
    pub trace_no: String,
    /// `MMDDhhmmss`.
    pub trace_time: String,
    /// 交易金额 in fen.
    pub amount_minor: u64,
    /// The corrected transaction: its trace number and time (what its ZM
    /// record carries), clearing day (`MMDD`) and amount (fen).
    pub orig_trace_no: String,
    pub orig_trace_time: String,
    pub orig_settle_date: String,
    pub orig_amount_minor: Option<u64>,
    /// 商户手续费 and 结算金额 as written (`C`/`D` and 12 digits).
    pub merchant_fee: String,
    pub settle_amount: String,
    pub mer_id: String,
}

impl ZmRecord {
    /// The ledger event kind this transaction is, when it moves money.
    pub fn kind(&self) -> Option<EventKind> {
        match self.txn_type.as_str() {
            "01" => Some(EventKind::Payment),
            "02" => Some(EventKind::Authorization),
            "03" => Some(EventKind::Capture),
            "04" => Some(EventKind::Refund),
            "31" | "33" => Some(EventKind::Void),
            "32" => Some(EventKind::AuthorizationVoid),
            _ => None,
        }
    }
}

/// The non-blank lines of a GBK fixed-width file, each with its 1-based
/// number, refusing one shorter than `min` (`what` names the layout).
fn records<'a>(
    bytes: &'a [u8],
    min: usize,
    full: usize,
    what: &'a str,
) -> impl Iterator<Item = Result<(usize, &'a [u8]), SettlementError>> + 'a {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter_map(move |(i, raw)| {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(|b| b.is_ascii_whitespace()) {
                return None;
            }
            Some(if raw.len() < min {
                Err(SettlementError::Record {
                    line: i + 1,
                    why: format!(
                        "{} bytes: too short for a {what} record's fields up to the merchant id ({min} of its {full})",
                        raw.len()
                    ),
                })
            } else {
                Ok((i + 1, raw))
            })
        })
}

/// Field `index` of a record laid out by `widths`, decoded and trimmed.
fn text_at(raw: &[u8], widths: &[usize], index: usize) -> String {
    let start = offset_in(widths, index);
    let (decoded, _, _) = encoding_rs::GBK.decode(&raw[start..start + widths[index]]);
    decoded.trim().to_owned()
}

/// Fen written as digits; `None` for anything else.
fn fen(text: &str) -> Option<u64> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Parses a ZME file by offsets, as [`parse_zm`] does a ZM file.
///
/// # Errors
/// `Record` with the 1-based line number.
pub fn parse_zme(bytes: &[u8]) -> Result<Vec<ZmeRecord>, SettlementError> {
    let full = reach(&ZME_WIDTHS, ZME_WIDTHS.len() - 1);
    records(bytes, ZME_MIN_RECORD_LEN, full, "ZME")
        .map(|r| {
            let (line, raw) = r?;
            let text = |index| text_at(raw, &ZME_WIDTHS, index);
            let amount = text(zme_field::AMOUNT);
            Ok(ZmeRecord {
                line,
                trade_code: text(zme_field::TRADE_CODE),
                trace_no: text(zme_field::TRACE_NO),
                trace_time: text(zme_field::TRACE_TIME),
                amount_minor: fen(&amount).ok_or_else(|| SettlementError::Record {
                    line,
                    why: format!("amount {amount:?} is not digits of fen"),
                })?,
                orig_trace_no: text(zme_field::ORIG_TRACE_NO),
                orig_trace_time: text(zme_field::ORIG_TRACE_TIME),
                orig_settle_date: text(zme_field::ORIG_SETTLE_DATE),
                orig_amount_minor: fen(&text(zme_field::ORIG_AMOUNT)),
                merchant_fee: text(zme_field::MERCHANT_FEE),
                settle_amount: text(zme_field::SETTLE_AMOUNT),
                mer_id: text(zme_field::MER_ID),
            })
        })
        .collect()
}

/// Writes records as a ZME file (the simulator and tests use it).
pub fn write_zme(records: &[ZmeRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let mut values: Vec<Vec<u8>> = ZME_WIDTHS.iter().map(|w| vec![b' '; *w]).collect();
        let mut put = |index: usize, value: &str| {
            let bytes = value.as_bytes();
            let bytes = &bytes[..bytes.len().min(ZME_WIDTHS[index])];
            values[index][..bytes.len()].copy_from_slice(bytes);
        };
        put(zme_field::TRADE_CODE, &r.trade_code);
        put(zme_field::TRACE_NO, &r.trace_no);
        put(zme_field::TRACE_TIME, &r.trace_time);
        put(zme_field::AMOUNT, &format!("{:012}", r.amount_minor));
        put(zme_field::ORIG_TRACE_NO, &r.orig_trace_no);
        put(zme_field::ORIG_TRACE_TIME, &r.orig_trace_time);
        put(zme_field::ORIG_SETTLE_DATE, &r.orig_settle_date);
        let orig = r
            .orig_amount_minor
            .map(|a| format!("{a:012}"))
            .unwrap_or_default();
        put(zme_field::ORIG_AMOUNT, &orig);
        put(zme_field::MERCHANT_FEE, &r.merchant_fee);
        put(zme_field::SETTLE_AMOUNT, &r.settle_amount);
        put(zme_field::MER_ID, &r.mer_id);
        out.extend_from_slice(&values.join(&b' '));
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses a ZM file, slicing each record by offsets as UnionPay's SDK
/// does. Blank lines are skipped; a line too short for the fields read, or
/// with a malformed amount, is an error naming its line.
///
/// # Errors
/// `Record` with the 1-based line number.
pub fn parse_zm(bytes: &[u8]) -> Result<Vec<ZmRecord>, SettlementError> {
    let mut out = Vec::new();
    for r in records(bytes, ZM_MIN_RECORD_LEN, ZM_RECORD_LEN, "ZM") {
        let (line, raw) = r?;
        let text = |index: usize| text_at(raw, &ZM_WIDTHS, index);
        let amount = text(field::AMOUNT);
        let amount_minor = match fen(&amount) {
            Some(a) => a,
            None if !amount.is_empty() && amount.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(SettlementError::Record {
                    line,
                    why: format!("amount {amount:?} is out of range"),
                })
            }
            None => {
                return Err(SettlementError::Record {
                    line,
                    why: format!("amount {amount:?} is not digits of fen"),
                })
            }
        };
        let query_id = text(field::QUERY_ID);
        if query_id.is_empty() {
            return Err(SettlementError::Record {
                line,
                why: "no queryId (查询流水号)".into(),
            });
        }
        let orig = text(field::ORIG_QUERY_ID);
        out.push(ZmRecord {
            line,
            trade_code: text(field::TRADE_CODE),
            trace_no: text(field::TRACE_NO),
            trace_time: text(field::TRACE_TIME),
            amount_minor,
            query_id,
            order_id: text(field::ORDER_ID),
            txn_type: text(field::TXN_TYPE),
            txn_sub_type: text(field::TXN_SUB_TYPE),
            biz_type: text(field::BIZ_TYPE),
            orig_query_id: (!orig.is_empty() && orig.bytes().any(|b| b != b'0')).then_some(orig),
            mer_id: text(field::MER_ID),
        });
    }
    Ok(out)
}

/// Writes records as a ZM file (what UnionPay's gateway does; the
/// simulator and tests use it). Fields paynotify does not read are blank,
/// the card number is masked.
pub fn write_zm(records: &[ZmRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let mut values: Vec<Vec<u8>> = ZM_WIDTHS.iter().map(|w| vec![b' '; *w]).collect();
        let mut put = |index: usize, value: &str, right_align_zero: bool| {
            let (encoded, _, _) = encoding_rs::GBK.encode(value);
            let width = ZM_WIDTHS[index];
            let bytes = &encoded[..encoded.len().min(width)];
            let slot = &mut values[index];
            if right_align_zero {
                slot.fill(b'0');
                slot[width - bytes.len()..].copy_from_slice(bytes);
            } else {
                slot[..bytes.len()].copy_from_slice(bytes);
            }
        };
        put(field::TRADE_CODE, &r.trade_code, false);
        put(field::TRACE_NO, &r.trace_no, false);
        put(field::TRACE_TIME, &r.trace_time, false);
        put(5, "6216***********0000", false);
        put(field::AMOUNT, &r.amount_minor.to_string(), true);
        put(field::QUERY_ID, &r.query_id, false);
        put(field::ORDER_ID, &r.order_id, false);
        put(field::TXN_TYPE, &r.txn_type, false);
        put(field::TXN_SUB_TYPE, &r.txn_sub_type, false);
        put(field::BIZ_TYPE, &r.biz_type, false);
        put(
            field::ORIG_QUERY_ID,
            r.orig_query_id.as_deref().unwrap_or(""),
            false,
        );
        put(field::MER_ID, &r.mer_id, false);
        out.extend_from_slice(&values.join(&b' '));
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: usize, query_id: &str, amount: u64) -> ZmRecord {
        ZmRecord {
            line,
            trade_code: "S22".into(),
            trace_no: "123456".into(),
            trace_time: "0105145046".into(),
            amount_minor: amount,
            query_id: query_id.into(),
            order_id: "pay20240105145046".into(),
            txn_type: "01".into(),
            txn_sub_type: "01".into(),
            biz_type: "000201".into(),
            orig_query_id: None,
            mer_id: "777290058167151".into(),
        }
    }

    /// The offsets the official SDK's `parseZMEFile` widths give (339
    /// bytes a record); a correction round-trips, a short line names itself.
    #[test]
    fn zme_records_are_read_by_offsets() {
        let offsets: Vec<usize> = (0..22).map(|i| offset_in(&ZME_WIDTHS, i)).collect();
        assert_eq!(
            offsets,
            [
                0, 4, 16, 28, 35, 46, 66, 79, 84, 87, 90, 97, 108, 113, 126, 140, 154, 170, 186,
                188, 201, 204
            ]
        );
        assert_eq!(offset_in(&ZME_WIDTHS, 21) + 135, 339);
        let r = ZmeRecord {
            line: 2,
            trade_code: "E74".into(),
            trace_no: "000777".into(),
            trace_time: "0105150000".into(),
            amount_minor: 300,
            orig_trace_no: "000001".into(),
            orig_trace_time: "0105145046".into(),
            orig_settle_date: "0105".into(),
            orig_amount_minor: Some(300),
            merchant_fee: "C000000000002".into(),
            settle_amount: "D000000000298".into(),
            mer_id: "777290058167151".into(),
        };
        let mut file = b"\r\n".to_vec();
        file.extend(write_zme(std::slice::from_ref(&r)));
        assert_eq!(file.len(), 2 + 339 + 2);
        assert_eq!(parse_zme(&file).unwrap(), [r]);
        let short = &file[..2 + ZME_MIN_RECORD_LEN - 1];
        assert!(matches!(
            parse_zme(short),
            Err(SettlementError::Record { line: 2, .. })
        ));
        assert_eq!(parse_zme(&file[..2 + ZME_MIN_RECORD_LEN]).unwrap().len(), 1);
    }

    #[test]
    fn layout_is_607_bytes_with_official_offsets() {
        assert_eq!(ZM_RECORD_LEN, 607);
        assert_eq!(offset_in(&ZM_WIDTHS, field::AMOUNT), 66);
        assert_eq!(offset_in(&ZM_WIDTHS, field::QUERY_ID), 87);
        assert_eq!(offset_in(&ZM_WIDTHS, field::ORDER_ID), 112);
        assert_eq!(offset_in(&ZM_WIDTHS, field::TXN_TYPE), 215);
        assert_eq!(offset_in(&ZM_WIDTHS, field::ORIG_QUERY_ID), 271);
        assert_eq!(offset_in(&ZM_WIDTHS, field::MER_ID), 293);
        assert_eq!(offset_in(&ZM_WIDTHS, 41), 509);
    }

    #[test]
    fn records_round_trip_through_the_packed_file_content() {
        let mut refund = record(2, "QR2", 40);
        refund.txn_type = "04".into();
        refund.trade_code = "S30".into();
        refund.orig_query_id = Some("Q1".into());
        let records = vec![record(1, "Q1", 1500), refund];
        let content = encode_file_content(&[
            ("INN24010588ZM_777290058167151".into(), write_zm(&records)),
            ("INN24010588ZME_777290058167151".into(), Vec::new()),
        ])
        .unwrap();
        let files = decode_file_content(&content).unwrap();
        let parsed = parse_zm(zm_file(&files).unwrap()).unwrap();
        assert_eq!(parsed, records);
        assert_eq!(parsed[1].kind(), Some(EventKind::Refund));
    }

    #[test]
    fn a_record_too_short_for_its_fields_names_its_line() {
        let mut file = write_zm(&[record(1, "Q1", 1)]);
        file.extend_from_slice(b"\r\n");
        // Short of its unread trailing fields: read as UnionPay's SDK does.
        let mut trimmed = write_zm(&[record(3, "Q2", 1)]);
        trimmed.truncate(trimmed.len() - 3);
        let mut ok = file.clone();
        ok.extend_from_slice(&trimmed);
        assert_eq!(parse_zm(&ok).unwrap()[1].query_id, "Q2");
        // Short of the merchant id it reads: refused with its line.
        let mut short = write_zm(&[record(3, "Q2", 1)]);
        short.truncate(ZM_MIN_RECORD_LEN - 1);
        file.extend_from_slice(&short);
        assert_eq!(
            parse_zm(&file).unwrap_err(),
            SettlementError::Record {
                line: 3,
                why: format!(
                    "{} bytes: too short for a ZM record's fields up to the merchant id ({ZM_MIN_RECORD_LEN} of its {ZM_RECORD_LEN})",
                    ZM_MIN_RECORD_LEN - 1
                )
            }
        );
        let mut bad_amount = write_zm(&[record(1, "Q1", 1)]);
        bad_amount[70] = b'x';
        assert!(matches!(
            parse_zm(&bad_amount),
            Err(SettlementError::Record { line: 1, .. })
        ));
    }

    #[test]
    fn gbk_text_and_layers_fail_with_their_names() {
        let mut r = record(1, "Q1", 1);
        r.order_id = "订单1".into();
        let parsed = parse_zm(&write_zm(&[r])).unwrap();
        assert_eq!(parsed[0].order_id, "订单1");
        assert_eq!(
            decode_file_content("not base64!").unwrap_err(),
            SettlementError::Base64
        );
        assert!(matches!(
            decode_file_content("aGVsbG8="),
            Err(SettlementError::Zlib(_))
        ));
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(b"not a zip").unwrap();
        let content = base64::engine::general_purpose::STANDARD.encode(zlib.finish().unwrap());
        assert!(matches!(
            decode_file_content(&content),
            Err(SettlementError::Zip(_))
        ));
        assert!(matches!(
            zm_file(&[("INN24010588ZME_1".into(), Vec::new())]),
            Err(SettlementError::NoZmFile(_))
        ));
    }
}
