//! From a verified UnionPay message to a [`PaymentEvent`] (DESIGN §4, §5).

use time::macros::{format_description, offset};
use time::PrimitiveDateTime;

use super::error::VerifyError;
use super::fields::Fields;
use crate::event::{order_id_of, EventKey, EventKind, EventOutcome, PaymentEvent, PaymentKey};
use crate::money::{Currency, Money};

/// Maps a verified message of `source` to a payment event.
///
/// `txnType` 01 purchase, 02 pre-auth, 03 pre-auth completion, 04 refund,
/// 31 void, 32 pre-auth void, 33 completion void; `respCode` 00 and A6
/// succeed, 03/04/05 are still in process; a missing `currencyCode` means CNY
/// and is marked as defaulted. Purchases and pre-auths are keyed by their
/// `queryId` (a failed or in-process one that names none, by its order:
/// `order:{orderId}:{txnTime}`); the others refer to the original by
/// `origQryId` (a refund or 33 void of a completed pre-auth names the
/// completion's `queryId`, which the ledger resolves through an alias).
///
/// # Errors
/// `UnsupportedTransaction` for other `txnType`s; `MissingField` or
/// `MalformedField` for absent or malformed fields.
pub fn to_event(source: &str, fields: &Fields) -> Result<PaymentEvent, VerifyError> {
    let merchant = fields.require("merId")?;
    let txn_type = fields.require("txnType")?;
    let (kind, ref_field) = match txn_type {
        "01" => (EventKind::Payment, "queryId"),
        "02" => (EventKind::Authorization, "queryId"),
        "03" => (EventKind::Capture, "origQryId"),
        "04" => (EventKind::Refund, "origQryId"),
        "31" | "33" => (EventKind::Void, "origQryId"),
        "32" => (EventKind::AuthorizationVoid, "origQryId"),
        other => return Err(VerifyError::UnsupportedTransaction(other.to_owned())),
    };
    let resp_code = fields.require("respCode")?;
    // The key's last part is the outcome class, named by its first code: a
    // success is one money movement whether it was reported 00 or A6 (a
    // notification and a status query's answer may differ), in process is
    // one state however UnionPay words it; a failure keeps its code (one
    // transaction has one final failure, and recording one twice moves no
    // money).
    let (outcome, class) = match resp_code {
        "00" | "A6" => (EventOutcome::Succeeded, "00"),
        "03" | "04" | "05" => (EventOutcome::Pending, "03"),
        failed => (EventOutcome::Failed, failed),
    };
    let order_id = fields.require("orderId")?;
    let txn_time = fields.require("txnTime")?;
    let query_id = fields.get("queryId").unwrap_or("");
    let payment_ref = match fields.get(ref_field).filter(|r| !r.is_empty()) {
        Some(r) => r.to_owned(),
        // A status query's answer about a failed or unfinished purchase may
        // name no queryId: the payment is then known by its order, the pair
        // UnionPay keys it by. A success must name the id its refunds refer
        // to.
        None if ref_field == "queryId" && outcome != EventOutcome::Succeeded => {
            format!("order:{order_id}:{txn_time}")
        }
        None => return Err(VerifyError::MissingField(ref_field)),
    };
    let movement = format!("{merchant}|{order_id}|{txn_time}|{txn_type}|{query_id}");
    let amount = parse_amount(fields.require("txnAmt")?)?;
    // The ACP specification defaults `currencyCode` to 156 (CNY); refund and
    // void responses often omit it.
    let given = fields.get("currencyCode").filter(|c| !c.is_empty());
    let code = given.unwrap_or("156");
    let currency = Currency::from_numeric(code).ok_or_else(|| VerifyError::MalformedField {
        field: "currencyCode",
        why: format!("{code:?} is not a supported ISO 4217 numeric code"),
    })?;
    let psp_time = parse_txn_time(txn_time)?;
    // Only the settlement reconciliation reads it: a malformed one leaves
    // the event without it rather than refusing a signed payment.
    let settle_date = fields
        .get("settleDate")
        .and_then(|mmdd| settle_date(mmdd, psp_time).ok());
    Ok(PaymentEvent {
        source: source.to_owned(),
        merchant: merchant.to_owned(),
        payment_ref: payment_ref.clone(),
        payment_key: PaymentKey::new(source, merchant, &payment_ref),
        event_key: event_key(&movement, class),
        legacy_key: (class != resp_code).then(|| event_key(&movement, resp_code)),
        order_id: order_id_of(kind, Some(order_id)),
        kind,
        outcome,
        amount: Money {
            minor: amount,
            currency,
        },
        currency_defaulted: given.is_none(),
        psp_txn_id: (!query_id.is_empty()).then(|| query_id.to_owned()),
        psp_time: Some(psp_time),
        result_code: Some(resp_code.to_owned()),
        result_message: fields.get("respMsg").map(str::to_owned),
        settle_date,
    })
}

/// `merId|orderId|txnTime|txnType|queryId|class`: the money movement and
/// its outcome class (DESIGN §4).
fn event_key(movement: &str, class: &str) -> EventKey {
    EventKey::new(format!("{movement}|{class}"))
}

fn parse_amount(s: &str) -> Result<u64, VerifyError> {
    let bad = |why: &str| VerifyError::MalformedField {
        field: "txnAmt",
        why: format!("{s:?}: {why}"),
    };
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("expected 1 to 12 digits of minor units"));
    }
    s.parse().map_err(|_| bad("not a number"))
}

/// The order (`orderId`, `txnTime`) of a UnionPay event, read back from its
/// event key (`merId|orderId|txnTime|txnType|queryId|class`, DESIGN §4).
pub fn order_of(event: &PaymentEvent) -> Option<super::query::QueryTarget> {
    let mut parts = event.event_key.as_str().split('|');
    let (_, order_id, txn_time) = (parts.next()?, parts.next()?, parts.next()?);
    let target = super::query::QueryTarget::Order {
        order_id: order_id.to_owned(),
        txn_time: txn_time.to_owned(),
    };
    target.check().ok().map(|()| target)
}

/// `settleDate` is `MMDD`: the clearing day on or just after the
/// transaction (Beijing time), so its year is the transaction's, or the next
/// one for a transaction late on 31 December settled on 1 January.
fn settle_date(mmdd: &str, txn: time::OffsetDateTime) -> Result<String, VerifyError> {
    let bad = || VerifyError::MalformedField {
        field: "settleDate",
        why: format!("{mmdd:?}: expected MMDD"),
    };
    if mmdd.len() != 4 || !mmdd.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (month, day) = (
        mmdd[..2].parse::<u8>().map_err(|_| bad())?,
        mmdd[2..].parse::<u8>().map_err(|_| bad())?,
    );
    let month = time::Month::try_from(month).map_err(|_| bad())?;
    let txn = txn.to_offset(offset!(+8)).date();
    let year = if u8::from(month) < u8::from(txn.month()) {
        txn.year() + 1
    } else {
        txn.year()
    };
    let date = time::Date::from_calendar_date(year, month, day).map_err(|_| bad())?;
    Ok(date.to_string())
}

/// `txnTime` is `YYYYMMDDhhmmss` in Beijing time (UTC+8).
fn parse_txn_time(s: &str) -> Result<time::OffsetDateTime, VerifyError> {
    let format = format_description!("[year][month][day][hour][minute][second]");
    PrimitiveDateTime::parse(s, &format)
        .map(|t| t.assume_offset(offset!(+8)))
        .map_err(|e| VerifyError::MalformedField {
            field: "txnTime",
            why: format!("{s:?}: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase() -> Fields {
        Fields::from_pairs([
            ("merId", "777290058167151"),
            ("txnType", "01"),
            ("queryId", "Q1"),
            ("respCode", "00"),
            ("orderId", "O1"),
            ("txnTime", "20220908132206"),
            ("txnAmt", "1500"),
            ("currencyCode", "156"),
        ])
        .unwrap()
    }

    #[test]
    fn maps_a_purchase() {
        let e = to_event("unionpay", &purchase()).unwrap();
        assert_eq!(e.payment_key.as_str(), "unionpay#777290058167151#Q1");
        assert_eq!(
            e.event_key.as_str(),
            "777290058167151|O1|20220908132206|01|Q1|00"
        );
        assert_eq!(
            (e.kind, e.outcome, e.amount.minor),
            (EventKind::Payment, EventOutcome::Succeeded, 1500)
        );
        assert_eq!(e.amount.currency.as_str(), "CNY");
        assert_eq!(e.psp_time.unwrap().unix_timestamp(), 1_662_614_526);
        assert_eq!(e.order_id.as_deref(), Some("O1"));
    }

    #[test]
    fn refunds_refer_to_the_original_and_codes_map() {
        let mut f = purchase();
        f.set("txnType", "04");
        assert_eq!(
            to_event("u", &f),
            Err(VerifyError::MissingField("origQryId"))
        );
        f.set("origQryId", "Q0");
        f.set("respCode", "05");
        let e = to_event("u", &f).unwrap();
        assert_eq!(
            (e.kind, e.outcome, e.payment_ref.as_str()),
            (EventKind::Refund, EventOutcome::Pending, "Q0")
        );
        // A refund's orderId is the refund's own order, not the payment's.
        assert_eq!(e.order_id, None);
        f.set("respCode", "12");
        assert_eq!(to_event("u", &f).unwrap().outcome, EventOutcome::Failed);
        f.set("respCode", "A6");
        assert_eq!(to_event("u", &f).unwrap().outcome, EventOutcome::Succeeded);
        assert!(!to_event("u", &f).unwrap().currency_defaulted);
        f.set("txnType", "32");
        assert_eq!(
            to_event("u", &f).unwrap().kind,
            EventKind::AuthorizationVoid
        );
        f.set("txnType", "33");
        assert_eq!(to_event("u", &f).unwrap().kind, EventKind::Void);
    }

    #[test]
    fn a_missing_currency_is_cny_and_marked_as_assumed() {
        let mut f = purchase();
        f.remove("currencyCode");
        let e = to_event("u", &f).unwrap();
        assert_eq!(e.amount.currency.as_str(), "CNY");
        assert!(e.currency_defaulted);
    }

    #[test]
    fn rejects_bad_fields() {
        let mut f = purchase();
        f.set("txnType", "79");
        assert!(matches!(
            to_event("u", &f),
            Err(VerifyError::UnsupportedTransaction(_))
        ));
        for amount in ["", "-1", "1.00", "9999999999999", "１"] {
            let mut f = purchase();
            f.set("txnAmt", amount);
            assert!(matches!(
                to_event("u", &f),
                Err(VerifyError::MalformedField {
                    field: "txnAmt",
                    ..
                })
            ));
        }
        let mut f = purchase();
        f.set("currencyCode", "999");
        assert!(matches!(
            to_event("u", &f),
            Err(VerifyError::MalformedField {
                field: "currencyCode",
                ..
            })
        ));
        let mut f = purchase();
        f.set("txnTime", "2022-09-08");
        assert!(matches!(
            to_event("u", &f),
            Err(VerifyError::MalformedField {
                field: "txnTime",
                ..
            })
        ));
    }
}
