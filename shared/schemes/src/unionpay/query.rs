//! The transaction status query (交易状态查询, `txnType=00`): the request a
//! merchant signs, and what UnionPay's synchronous answer means.
//!
//! The answer is UnionPay's raw `k=v&…` format (parse it with
//! [`parse_raw`](super::parse_raw), never with a form decoder) and is
//! verified like a notification. `respCode` is the result of the query
//! itself; when it is `00`, `origRespCode` is the state of the queried
//! transaction: `00`/`A6` succeeded, `03`/`04`/`05` still in process,
//! anything else failed. `respCode=34` means UnionPay has no such
//! transaction (yet: before the payment's timeout a front transaction may
//! still appear).

use time::OffsetDateTime;

use super::error::VerifyError;
use super::fields::Fields;
use super::mapping::to_event;
use super::sign::SigningKey;
use crate::event::PaymentEvent;

/// `bizType` of a query when the source does not set one (the API page's
/// default; UnionPay's B2C demo sends `000201`, which the gateway takes too).
pub const DEFAULT_BIZ_TYPE: &str = "000000";

/// Which transaction to ask about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum QueryTarget {
    /// The merchant's order: its `orderId` and `txnTime`
    /// (`YYYYMMDDhhmmss`, Beijing time), the pair UnionPay keys it by.
    Order { order_id: String, txn_time: String },
    /// UnionPay's own id of the transaction (`queryId`), sent with
    /// `txnSubType=02` (流水号查询) as the API page describes. Used for a
    /// payment known only from a refund or void that names it.
    QueryId { query_id: String },
}

impl QueryTarget {
    /// A short text for logs and output.
    pub fn describe(&self) -> String {
        match self {
            Self::Order { order_id, txn_time } => format!("order {order_id} at {txn_time}"),
            Self::QueryId { query_id } => format!("queryId {query_id}"),
        }
    }

    /// Checks the formats UnionPay requires (`orderId` AN8..40,
    /// `txnTime` 14 digits), so a typo fails here and not at the gateway.
    ///
    /// # Errors
    /// `MalformedField` naming the field.
    pub fn check(&self) -> Result<(), VerifyError> {
        let bad = |field: &'static str, why: &str| {
            Err(VerifyError::MalformedField {
                field,
                why: why.to_owned(),
            })
        };
        match self {
            Self::Order { order_id, txn_time } => {
                if !(8..=40).contains(&order_id.len())
                    || !order_id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return bad("orderId", "expected 8 to 40 letters or digits");
                }
                if txn_time.len() != 14 || !txn_time.bytes().all(|b| b.is_ascii_digit()) {
                    return bad("txnTime", "expected YYYYMMDDhhmmss");
                }
            }
            Self::QueryId { query_id } => {
                if query_id.is_empty()
                    || query_id.len() > 21
                    || !query_id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return bad("queryId", "expected 1 to 21 letters or digits");
                }
            }
        }
        Ok(())
    }
}

/// The signed fields of a status query for `target` of merchant `mer_id`.
///
/// # Errors
/// A malformed target, or a signing failure.
pub fn query_request(
    key: &SigningKey,
    mer_id: &str,
    biz_type: &str,
    target: &QueryTarget,
) -> Result<Fields, VerifyError> {
    target.check()?;
    let sub_type = match target {
        QueryTarget::Order { .. } => "00",
        QueryTarget::QueryId { .. } => "02",
    };
    let mut fields = Fields::from_pairs([
        ("version", "5.1.0"),
        ("encoding", "utf-8"),
        ("signMethod", "01"),
        ("txnType", "00"),
        ("txnSubType", sub_type),
        ("bizType", biz_type),
        ("accessType", "0"),
        ("merId", mer_id),
    ])?;
    match target {
        QueryTarget::Order { order_id, txn_time } => {
            fields.set("orderId", order_id);
            fields.set("txnTime", txn_time);
        }
        QueryTarget::QueryId { query_id } => fields.set("queryId", query_id),
    }
    key.sign(&mut fields)?;
    Ok(fields)
}

/// What a verified query answer says about the queried transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryAnswer {
    /// The transaction reached a result (`origRespCode` 00/A6: succeeded;
    /// another code: failed): the event to apply.
    Final(Box<PaymentEvent>),
    /// `origRespCode` 03/04/05: UnionPay is still processing; ask again.
    InProcess { code: String, message: String },
    /// `respCode=34`: UnionPay knows no such transaction (yet).
    NotFound { message: String },
    /// The query itself failed (another `respCode`): nothing is known
    /// about the transaction.
    Refused { code: String, message: String },
}

impl QueryAnswer {
    /// A short name for output, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Final(e) if e.outcome == crate::event::EventOutcome::Succeeded => "succeeded",
            Self::Final(_) => "failed",
            Self::InProcess { .. } => "in_process",
            Self::NotFound { .. } => "not_found",
            Self::Refused { .. } => "refused",
        }
    }
}

/// Reads a verified answer of `source`: the queried transaction's event
/// carries `origRespCode` as its result, so it has the event key a
/// notification of the same result has, and the two apply once.
///
/// An answer that names no `queryId` (UnionPay's answers about failed and
/// unfinished transactions may not) is about `known_query_id` when the
/// asker knows it (it asked by `queryId`, or a notification named it);
/// else a failed purchase is keyed by its order (see [`to_event`]).
///
/// # Errors
/// Missing or malformed fields of a final answer (`to_event`'s errors).
pub fn classify(
    source: &str,
    answer: &Fields,
    known_query_id: Option<&str>,
) -> Result<QueryAnswer, VerifyError> {
    let code = answer.require("respCode")?;
    let message = answer.get("respMsg").unwrap_or("").to_owned();
    match code {
        "00" => {}
        "34" => return Ok(QueryAnswer::NotFound { message }),
        other => {
            return Ok(QueryAnswer::Refused {
                code: other.to_owned(),
                message,
            })
        }
    }
    let orig = answer.require("origRespCode")?;
    let orig_message = answer.get("origRespMsg").unwrap_or("").to_owned();
    if matches!(orig, "03" | "04" | "05") {
        return Ok(QueryAnswer::InProcess {
            code: orig.to_owned(),
            message: orig_message,
        });
    }
    let mut fields = answer.clone();
    if let Some(id) = known_query_id.filter(|_| answer.get("queryId").is_none_or(str::is_empty)) {
        fields.set("queryId", id);
    }
    fields.set("respCode", orig);
    fields.set("respMsg", &orig_message);
    Ok(QueryAnswer::Final(Box::new(to_event(source, &fields)?)))
}

/// `YYYYMMDDhhmmss` in Beijing time, as `txnTime` is written.
pub fn txn_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::macros::offset!(+8));
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(pairs: &[(&str, &str)]) -> Fields {
        let mut base = vec![
            ("merId", "777290058167151"),
            ("txnType", "01"),
            ("queryId", "Q1"),
            ("orderId", "O1234567"),
            ("txnTime", "20240105145046"),
            ("txnAmt", "100"),
        ];
        base.extend_from_slice(pairs);
        Fields::from_pairs(base).unwrap()
    }

    fn classify_(source: &str, answer: &Fields) -> Result<QueryAnswer, VerifyError> {
        classify(source, answer, None)
    }

    /// The answers of a gateway about a failed purchase name no queryId:
    /// the failure is about the queryId the asker knows, or else the order.
    #[test]
    fn a_failure_without_a_query_id_is_keyed_by_what_is_known() {
        let mut a = answer(&[("respCode", "00"), ("origRespCode", "12")]);
        a.remove("queryId");
        let by_order = classify("up", &a, None).unwrap();
        let QueryAnswer::Final(e) = &by_order else {
            panic!("{by_order:?}")
        };
        assert_eq!(e.payment_ref, "order:O1234567:20240105145046");
        assert_eq!(e.outcome, crate::event::EventOutcome::Failed);
        let known = classify("up", &a, Some("Q7")).unwrap();
        let QueryAnswer::Final(e) = &known else {
            panic!("{known:?}")
        };
        assert_eq!(
            (e.payment_ref.as_str(), e.psp_txn_id.as_deref()),
            ("Q7", Some("Q7"))
        );
        // A success must name the id its refunds refer to.
        a.set("origRespCode", "00");
        assert_eq!(
            classify("up", &a, None).unwrap_err(),
            VerifyError::MissingField("queryId")
        );
        // An answer that names one keeps it.
        let named = answer(&[("respCode", "00"), ("origRespCode", "12")]);
        let QueryAnswer::Final(e) = classify("up", &named, Some("Q7")).unwrap() else {
            panic!()
        };
        assert_eq!(e.payment_ref, "Q1");
    }

    #[test]
    fn orig_resp_code_decides_the_queried_transaction() {
        let ok = classify_("up", &answer(&[("respCode", "00"), ("origRespCode", "00")])).unwrap();
        let QueryAnswer::Final(e) = &ok else {
            panic!("{ok:?}")
        };
        assert_eq!(ok.name(), "succeeded");
        assert!(e.event_key.as_str().ends_with("|Q1|00"), "{}", e.event_key);
        let failed =
            classify_("up", &answer(&[("respCode", "00"), ("origRespCode", "12")])).unwrap();
        assert_eq!(failed.name(), "failed");
        for code in ["03", "04", "05"] {
            let a =
                classify_("up", &answer(&[("respCode", "00"), ("origRespCode", code)])).unwrap();
            assert_eq!(a.name(), "in_process", "{code}");
        }
        let missing = classify_(
            "up",
            &answer(&[("respCode", "34"), ("respMsg", "查无此交易")]),
        );
        assert_eq!(missing.unwrap().name(), "not_found");
        let refused = classify_("up", &answer(&[("respCode", "10")])).unwrap();
        assert_eq!(refused.name(), "refused");
        assert_eq!(
            classify_("up", &answer(&[("respCode", "00")])).unwrap_err(),
            VerifyError::MissingField("origRespCode")
        );
    }

    #[test]
    fn targets_are_checked_before_signing() {
        let bad = [
            QueryTarget::Order {
                order_id: "short".into(),
                txn_time: "20240105145046".into(),
            },
            QueryTarget::Order {
                order_id: "pay20240105145046".into(),
                txn_time: "2024-01-05".into(),
            },
            QueryTarget::Order {
                order_id: "pay 20240105145046".into(),
                txn_time: "20240105145046".into(),
            },
            QueryTarget::QueryId {
                query_id: String::new(),
            },
        ];
        for t in bad {
            assert!(t.check().is_err(), "{t:?}");
        }
    }

    #[test]
    fn txn_time_is_beijing_time() {
        let t = time::macros::datetime!(2024-01-05 06:50:46 UTC);
        assert_eq!(txn_time(t), "20240105145046");
    }
}
