use super::*;
use time::macros::datetime;

const SINCE: OffsetDateTime = datetime!(2026-11-26 02:00:00 UTC);
const SCHEDULE: [u64; 3] = [300, 600, 1800];

fn claimed(attempts: u32) -> Watch {
    let target = QueryTarget::Order {
        order_id: "order0001".into(),
        txn_time: "20261126100000".into(),
    };
    Watch {
        id: Watch::id_for("up", "m", &target),
        source: "up".into(),
        merchant: "m".into(),
        target,
        query_id: None,
        reason: "expected".into(),
        since: SINCE,
        attempts,
        failures: 0,
        due_at: Some(SINCE),
        last_answer: None,
        finished: None,
        version: 2,
    }
}

fn report(answer: &'static str, applied: Option<&str>) -> Result<QueryReport, QueryError> {
    Ok(QueryReport {
        source: "up".into(),
        merchant: "m".into(),
        target: claimed(0).target,
        exchange_id: "x".into(),
        request_key: String::new(),
        response_key: String::new(),
        answer,
        code: None,
        message: None,
        event: None,
        applied: applied.map(str::to_owned),
        refused: None,
    })
}

#[test]
fn a_final_answer_ends_the_watch_and_others_take_the_next_step() {
    let now = SINCE + time::Duration::minutes(5);
    let done = next_step(
        &claimed(0),
        &SCHEDULE,
        &report("succeeded", Some("applied")),
        now,
    );
    assert_eq!(
        (done.finished.as_deref(), done.due_at),
        (Some("succeeded"), None)
    );
    assert_eq!(done.version, 3);
    let again = next_step(&claimed(0), &SCHEDULE, &report("in_process", None), now);
    assert_eq!(again.due_at, Some(SINCE + time::Duration::seconds(600)));
    assert_eq!((again.attempts, again.finished), (1, None));
    // Asking resumed late (a watch registered late, a worker outage):
    // the steps already past keep their spacing from now on, rather
    // than firing back to back and giving up within seconds.
    let late = SINCE + time::Duration::hours(1);
    let behind = next_step(&claimed(0), &SCHEDULE, &report("not_found", None), late);
    assert_eq!(
        behind.due_at,
        Some(late + time::Duration::seconds(600 - 300))
    );
    let then = behind.due_at.unwrap();
    let after = next_step(&behind, &SCHEDULE, &report("not_found", None), then);
    assert_eq!(
        after.due_at,
        Some(then + time::Duration::seconds(1800 - 600))
    );
    let out = next_step(&claimed(2), &SCHEDULE, &report("not_found", None), late);
    assert_eq!(
        (out.finished.as_deref(), out.due_at),
        (Some("gave up: not_found"), None)
    );
}

#[test]
fn transient_errors_back_off_without_a_step_and_refusals_use_one() {
    let now = SINCE + time::Duration::minutes(5);
    let transient = Err(QueryError::Http(503));
    let once = next_step(&claimed(1), &SCHEDULE, &transient, now);
    assert_eq!((once.attempts, once.failures), (1, 1));
    assert_eq!(once.due_at, Some(now + time::Duration::seconds(60)));
    let mut twice = claimed(1);
    twice.failures = 1;
    let twice = next_step(&twice, &SCHEDULE, &transient, now);
    assert_eq!(twice.due_at, Some(now + time::Duration::seconds(120)));
    // A day past the schedule, it gives up.
    let much_later = SINCE + time::Duration::days(2);
    let gone = next_step(&claimed(1), &SCHEDULE, &transient, much_later);
    assert!(gone.finished.unwrap().starts_with("gave up"));

    let refused = Err(QueryError::Rejected {
        step: "certificate",
        error: "forged".into(),
    });
    let next = next_step(&claimed(0), &SCHEDULE, &refused, now);
    assert_eq!(next.attempts, 1);
    assert_eq!(next.due_at, Some(SINCE + time::Duration::seconds(600)));
}

#[test]
fn an_answer_about_another_transaction_is_refused() {
    let order = QueryTarget::Order {
        order_id: "order0001".into(),
        txn_time: "20261126100000".into(),
    };
    let answer = |pairs: &[(&str, &str)]| Fields::from_pairs(pairs.iter().copied()).unwrap();
    let ok = answer(&[
        ("respCode", "00"),
        ("merId", "m"),
        ("orderId", "order0001"),
        ("txnTime", "20261126100000"),
    ]);
    assert_eq!(about(&ok, "m", &order), Ok(()));
    let other_order = answer(&[
        ("respCode", "00"),
        ("merId", "m"),
        ("orderId", "order0002"),
        ("txnTime", "20261126100000"),
    ]);
    assert!(matches!(
        about(&other_order, "m", &order),
        Err(VerifyError::MalformedField {
            field: "orderId",
            ..
        })
    ));
    let other_merchant = answer(&[("respCode", "34"), ("merId", "n")]);
    assert!(matches!(
        about(&other_merchant, "m", &order),
        Err(VerifyError::MalformedField { field: "merId", .. })
    ));
    // "No such transaction" need not echo the order.
    assert_eq!(
        about(&answer(&[("respCode", "34"), ("merId", "m")]), "m", &order),
        Ok(())
    );
    let by_id = QueryTarget::QueryId {
        query_id: "Q1".into(),
    };
    let other_id = answer(&[("respCode", "00"), ("merId", "m"), ("queryId", "Q2")]);
    assert!(matches!(
        about(&other_id, "m", &by_id),
        Err(VerifyError::MalformedField {
            field: "queryId",
            ..
        })
    ));
}
