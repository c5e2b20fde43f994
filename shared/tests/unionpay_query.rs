//! The merchant side of UnionPay against the real vectors in `../shared`:
//! the signing key and its `certId`, the status query request (byte for
//! byte as UnionPay's SDKs sign it), and the verification and meaning of
//! real query answers, forged, tampered and form-decoded ones rejected with
//! the step named.

use paynotify_shared::scheme::unionpay::{
    classify, parse_form, parse_raw, query_request, BodyFormat, QueryAnswer, QueryTarget,
    SigningKey, VerifyError,
};
use paynotify_shared::testing::*;
use paynotify_shared::{EventKind, EventOutcome};

const SYNC_PAY: &str = "unionpay/yansongda-pay/sync_response_txnType01_pay20240105145046.txt";
const SYNC_REFUND: &str =
    "unionpay/yansongda-pay/sync_response_txnType04_refundpay20240105165842.txt";
const SYNC_VOID: &str =
    "unionpay/yansongda-pay/sync_response_txnType31_cancelpay20240105164725.txt";

fn pfx_key() -> SigningKey {
    SigningKey::from_pkcs12(
        &read_vector("unionpay/yansongda-pay/unipayAppCert.pfx"),
        "000000",
    )
    .expect("the test PKCS#12 opens with its documented password")
}

#[test]
fn the_signing_key_comes_from_pkcs12_or_pem_with_its_cert_id() {
    let pfx = pfx_key();
    assert_eq!(pfx.cert_id(), "69903319369");
    let pem = SigningKey::from_pem(
        &read_vector("unionpay/certs/acp_test_sign_2021-2026.key.pem"),
        &read_vector("unionpay/certs/acp_test_sign_2021-2026.cert.pem"),
    )
    .unwrap();
    assert_eq!(pem.cert_id(), "69903319369");
    let wrong_password = SigningKey::from_pkcs12(
        &read_vector("unionpay/yansongda-pay/unipayAppCert.pfx"),
        "111111",
    );
    assert!(
        matches!(wrong_password, Err(VerifyError::MalformedCertificate(_))),
        "{wrong_password:?}"
    );
    let mismatched = SigningKey::from_pem(
        &read_vector("unionpay/certs/acp_test_sign_2015-2018.key.pem"),
        &read_vector("unionpay/certs/acp_test_sign_2021-2026.cert.pem"),
    )
    .unwrap_err();
    assert!(
        mismatched
            .to_string()
            .contains("not the key of certificate"),
        "{mismatched}"
    );
}

#[test]
fn a_status_query_is_the_vector_byte_for_byte() {
    let expected = parse_form(&read_vector(
        "unionpay/yansongda-pay/signed_request_1.formurlencoded.txt",
    ))
    .unwrap();
    let built = query_request(
        &pfx_key(),
        YANSONGDA_MERCHANT,
        "000000",
        &QueryTarget::Order {
            order_id: "pay20240105145046".into(),
            txn_time: "20240105145046".into(),
        },
    )
    .unwrap();
    assert_eq!(
        built.iter().collect::<Vec<_>>(),
        expected.iter().collect::<Vec<_>>()
    );
}

#[test]
fn every_signed_request_vector_is_reproduced_by_the_signing_key() {
    let key = pfx_key();
    for i in 0..4 {
        let original = parse_form(&read_vector(&format!(
            "unionpay/yansongda-pay/signed_request_{i}.formurlencoded.txt"
        )))
        .unwrap();
        let mut fields = original.clone();
        fields.remove("signature");
        fields.remove("certId");
        key.sign(&mut fields).unwrap();
        assert_eq!(
            fields.iter().collect::<Vec<_>>(),
            original.iter().collect::<Vec<_>>(),
            "signed_request_{i}"
        );
    }
}

#[test]
fn a_real_query_answer_verifies_and_says_what_happened() {
    let verifier = yansongda_verifier(BodyFormat::Raw);
    let verified = verifier
        .verify(&read_vector(SYNC_PAY), YANSONGDA_AT)
        .unwrap();
    let answer = classify("unionpay", &verified.fields, None).unwrap();
    let QueryAnswer::Final(event) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(
        (event.kind, event.outcome, event.amount.minor),
        (EventKind::Payment, EventOutcome::Succeeded, 1)
    );
    assert_eq!(event.payment_ref, "442401051450467846498");
    // The key a notification of the same success has.
    assert_eq!(
        event.event_key.as_str(),
        "777290058167151|pay20240105145046|20240105145046|01|442401051450467846498|00"
    );
    assert_eq!(event.settle_date.as_deref(), Some("2024-01-05"));

    // The answers to a refund and a void request are not status answers:
    // they verify, but have no `origRespCode` to read as a result.
    for rel in [SYNC_REFUND, SYNC_VOID] {
        let verified = verifier.verify(&read_vector(rel), YANSONGDA_AT).unwrap();
        assert_eq!(
            classify("unionpay", &verified.fields, None).unwrap_err(),
            VerifyError::MissingField("origRespCode"),
            "{rel}"
        );
    }
}

/// Replaces the value of `key` in a raw answer.
fn replace_field(body: &[u8], key: &str, value: &str) -> Vec<u8> {
    let fields = parse_raw(body).unwrap();
    let old = fields.get(key).unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let needle = format!("{key}={old}");
    assert!(text.contains(&needle));
    text.replacen(&needle, &format!("{key}={value}"), 1)
        .into_bytes()
}

#[test]
fn forged_tampered_and_form_decoded_answers_are_rejected_with_the_step() {
    let verifier = yansongda_verifier(BodyFormat::Raw);
    let genuine = read_vector(SYNC_PAY);

    // A self-signed certificate that claims UnionPay's name.
    let forged_cert =
        json_vector_fields("unionpay/negative/forged_selfsigned_cert_backnotify.json")
            .get("signPubKeyCert")
            .unwrap()
            .to_owned();
    let forged = replace_field(&genuine, "signPubKeyCert", &forged_cert);
    let e = verifier.verify(&forged, YANSONGDA_AT).unwrap_err();
    assert_eq!(
        (e.step(), e.name()),
        ("certificate", "untrusted_certificate"),
        "{e}"
    );

    // A changed result under the genuine signature.
    let tampered = replace_field(&genuine, "origRespCode", "03");
    let e = verifier.verify(&tampered, YANSONGDA_AT).unwrap_err();
    assert_eq!(e.step(), "signature", "{e}");

    // A bad signature.
    let signature = parse_raw(&genuine)
        .unwrap()
        .get("signature")
        .unwrap()
        .to_owned();
    let mut flipped = signature.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let bad = replace_field(
        &genuine,
        "signature",
        std::str::from_utf8(&flipped).unwrap(),
    );
    let e = verifier.verify(&bad, YANSONGDA_AT).unwrap_err();
    assert_eq!(e.step(), "signature", "{e}");

    // The same answer read as a form: every '+' of its base64 becomes a
    // space, and it no longer verifies.
    assert!(genuine.contains(&b'+'), "the vector has a '+' to lose");
    let decoded = match parse_form(&genuine) {
        Ok(fields) => verifier.verify_fields(fields, YANSONGDA_AT).unwrap_err(),
        Err(e) => e,
    };
    assert!(
        ["parse", "fields", "certificate", "signature"].contains(&decoded.step()),
        "{decoded}"
    );
}

mod hostile {
    use paynotify_shared::scheme::unionpay::{
        classify, decode_file_content, parse_raw, parse_zm, unzip, write_zm, BodyFormat, Fields,
        ZmRecord, ZM_MIN_RECORD_LEN, ZM_RECORD_LEN,
    };
    use paynotify_shared::testing::*;
    use proptest::prelude::*;

    fn record() -> ZmRecord {
        ZmRecord {
            line: 1,
            trade_code: "S22".into(),
            trace_no: "000001".into(),
            trace_time: "1126101010".into(),
            amount_minor: 1500,
            query_id: "Q1".into(),
            order_id: "order0001".into(),
            txn_type: "01".into(),
            txn_sub_type: "01".into(),
            biz_type: "000201".into(),
            orig_query_id: None,
            mer_id: YANSONGDA_MERCHANT.into(),
        }
    }

    /// A file whose lines lost their trailing spaces (an editor, a transfer
    /// that trims) or carry a byte more is read as UnionPay's SDK reads it.
    #[test]
    fn trimmed_and_longer_lines_read_the_same_records() {
        let genuine = write_zm(&[
            record(),
            ZmRecord {
                line: 2,
                query_id: "Q2".into(),
                ..record()
            },
        ]);
        let trimmed: Vec<u8> = String::from_utf8(genuine.clone())
            .unwrap()
            .lines()
            .map(|l| format!("{}\r\n", l.trim_end()))
            .collect::<String>()
            .into_bytes();
        let longer: Vec<u8> = String::from_utf8(genuine.clone())
            .unwrap()
            .lines()
            .map(|l| format!("{l}X\n"))
            .collect::<String>()
            .into_bytes();
        let expected = parse_zm(&genuine).unwrap();
        assert_eq!(parse_zm(&trimmed).unwrap(), expected);
        assert_eq!(parse_zm(&longer).unwrap(), expected);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Settlement files of any bytes: an error or records, never a panic.
        #[test]
        fn settlement_files_of_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse_zm(&bytes);
            let _ = unzip(&bytes);
            let _ = decode_file_content(&String::from_utf8_lossy(&bytes));
        }

        /// UnionPay's SDK slices a record by offsets and never checks its
        /// length: a line that lost its trailing spaces, or carries a byte
        /// more at its end, reads as the same record; a line too short for
        /// the fields read is refused with its line.
        #[test]
        fn records_are_read_by_offsets_and_only_a_line_too_short_is_refused(cut in 0usize..ZM_RECORD_LEN, extra in any::<u8>()) {
            let mut line = write_zm(&[record()]);
            line.truncate(ZM_RECORD_LEN);
            let needed = ZM_MIN_RECORD_LEN;
            let mut file = write_zm(&[record()]);
            let shortened = &line[..cut.max(1)];
            file.extend_from_slice(shortened);
            file.extend_from_slice(b"\r\n");
            match parse_zm(&file) {
                Ok(records) => {
                    prop_assert!(shortened.len() >= needed, "{} bytes read as a record", shortened.len());
                    prop_assert_eq!(&records[1], &ZmRecord { line: 2, ..record() });
                }
                Err(e) => {
                    prop_assert!(e.to_string().starts_with("line 2:"), "{}", e);
                    prop_assert!(shortened.len() < needed, "{} bytes refused: {}", shortened.len(), e);
                }
            }
            let mut longer = line.clone();
            longer.push(extra);
            let mut file = write_zm(&[record()]);
            file.extend_from_slice(&longer);
            prop_assert_eq!(&parse_zm(&file).unwrap()[1], &ZmRecord { line: 2, ..record() });
        }

        /// A genuine query answer cut anywhere, or with whitespace put
        /// anywhere, never verifies.
        #[test]
        fn a_cut_or_spaced_answer_never_verifies(at in 0usize..2738, ws in prop::sample::select(vec![" ", "\n", "\r\n", "\t"]), cut in any::<bool>()) {
            let genuine = read_vector(super::SYNC_PAY);
            let at = at.min(genuine.len() - 1);
            let mut body = genuine[..at].to_vec();
            if !cut {
                body.extend_from_slice(ws.as_bytes());
                body.extend_from_slice(&genuine[at..]);
            }
            let verifier = yansongda_verifier(BodyFormat::Raw);
            prop_assert!(verifier.verify(&body, YANSONGDA_AT).is_err());
        }

        /// Answers of any fields are read or refused, never a panic.
        #[test]
        fn any_fields_are_classified_without_panic(
            pairs in proptest::collection::btree_map(
                prop::sample::select(vec!["respCode", "origRespCode", "txnType", "merId", "orderId", "txnTime", "txnAmt", "queryId", "origQryId", "settleDate", "currencyCode"]),
                "[0-9A-Za-z]{0,16}",
                0..11,
            )
        ) {
            let fields = Fields::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
            let _ = classify("unionpay", &fields, None);
            let _ = parse_raw(&fields.to_raw_body());
        }
    }
}
