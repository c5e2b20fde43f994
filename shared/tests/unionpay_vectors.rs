//! UnionPay verification against the real signed messages in `../shared/vectors`.

use paynotify_shared::config::UNIONPAY_IDENTITY;
use paynotify_shared::scheme::unionpay::{
    parse_form, sign_fields, to_event, BodyFormat, MerchantSigner, UnionPayVerifier,
    VerifierConfig, VerifyError,
};
use paynotify_shared::testing::*;
use paynotify_shared::testpki::{generate, TestPkiOptions};
use paynotify_shared::{EventKind, EventOutcome};
use time::macros::datetime;
use time::OffsetDateTime;

const BACKNOTIFY: &str = "unionpay/yansongda-pay/backnotify_purchase_20220908.json";
const SYNC: [&str; 3] = [
    "unionpay/yansongda-pay/sync_response_txnType01_pay20240105145046.txt",
    "unionpay/yansongda-pay/sync_response_txnType04_refundpay20240105165842.txt",
    "unionpay/yansongda-pay/sync_response_txnType31_cancelpay20240105164725.txt",
];

fn form() -> UnionPayVerifier {
    yansongda_verifier(BodyFormat::Form)
}

#[test]
fn backnotify_verifies_and_maps_to_a_purchase() {
    let body = json_vector_form(BACKNOTIFY);
    let verified = form()
        .verify(&body, YANSONGDA_AT)
        .expect("genuine notification verifies");
    assert_eq!(verified.version, "5.1.0");
    assert!(verified.certificate.subject.contains("00016495"));
    let event = to_event("unionpay", &verified.fields).unwrap();
    assert_eq!(
        event.payment_key.as_str(),
        "unionpay#777290058167151#782209081322060674028"
    );
    assert_eq!(
        (event.kind, event.outcome, event.amount.minor),
        (EventKind::Payment, EventOutcome::Succeeded, 1)
    );
    assert_eq!(event.amount.currency.as_str(), "CNY");
}

#[test]
fn query_response_verifies() {
    let body = json_vector_form("unionpay/yansongda-pay/query_response_20220911.json");
    form()
        .verify(&body, YANSONGDA_AT)
        .expect("query response verifies");
}

#[test]
fn raw_sync_responses_verify_with_the_raw_parser() {
    let raw = yansongda_verifier(BodyFormat::Raw);
    for rel in SYNC {
        let body = read_vector(rel);
        let v = raw
            .verify(&body, YANSONGDA_AT)
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        let event = to_event("unionpay", &v.fields).unwrap();
        assert_eq!(event.outcome, EventOutcome::Succeeded, "{rel}");
    }
    // The refund and the void refer to their original payment.
    let refund = raw.verify(&read_vector(SYNC[1]), YANSONGDA_AT).unwrap();
    let e = to_event("unionpay", &refund.fields).unwrap();
    assert_eq!(
        (e.kind, e.payment_ref.as_str()),
        (EventKind::Refund, refund.fields.get("origQryId").unwrap())
    );
}

#[test]
fn omnipay_front_notification_verifies_with_the_test_identity() {
    let verifier = UnionPayVerifier::new(&VerifierConfig {
        trust: cfca_trust("00040000:SIGN"),
        verify_certs: vec![],
        merchants: vec!["777290058146592".into()],
        body_format: BodyFormat::Form,
    })
    .unwrap();
    let body = read_vector("unionpay/omnipay-unionpay/WtzCompleteFrontOpen.txt");
    let v = verifier
        .verify(&body, OMNIPAY_AT)
        .expect("omnipay vector verifies");
    assert!(v.fields.get("tokenPayData").unwrap().starts_with("{token="));
    // txnType 79 (token opening) is genuine but not a payment event.
    assert!(
        matches!(to_event("unionpay", &v.fields), Err(VerifyError::UnsupportedTransaction(t)) if t == "79")
    );
    // With the production identity the same certificate is refused.
    let prod = UnionPayVerifier::new(&VerifierConfig {
        trust: cfca_trust(UNIONPAY_IDENTITY),
        verify_certs: vec![],
        merchants: vec!["777290058146592".into()],
        body_format: BodyFormat::Form,
    })
    .unwrap();
    assert!(matches!(
        prod.verify(&body, OMNIPAY_AT),
        Err(VerifyError::IdentityMismatch { .. })
    ));
}

#[test]
fn negative_vectors_are_rejected_with_the_right_error() {
    let forged = json_vector_form("unionpay/negative/forged_selfsigned_cert_backnotify.json");
    assert!(matches!(
        form().verify(&forged, YANSONGDA_AT),
        Err(VerifyError::UntrustedCertificate(_))
    ));
    let tampered = json_vector_form("unionpay/negative/tampered_txnAmt_backnotify.json");
    assert_eq!(
        form().verify(&tampered, YANSONGDA_AT).unwrap_err(),
        VerifyError::BadSignature
    );
}

#[test]
fn every_vector_is_rejected_today_because_its_leaf_expired() {
    let today = OffsetDateTime::now_utc();
    let body = json_vector_form(BACKNOTIFY);
    assert!(matches!(
        form().verify(&body, today),
        Err(VerifyError::CertificateExpired { .. })
    ));
    for rel in SYNC {
        let err = yansongda_verifier(BodyFormat::Raw)
            .verify(&read_vector(rel), today)
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::CertificateExpired { .. }),
            "{rel}: {err}"
        );
    }
    // One second after notAfter (2025-07-31T01:19:16Z) is too late; at notAfter it is fine.
    assert!(form()
        .verify(&body, datetime!(2025-07-31 01:19:16 UTC))
        .is_ok());
    assert!(form()
        .verify(&body, datetime!(2025-07-31 01:19:17 UTC))
        .is_err());
    assert!(form()
        .verify(&body, datetime!(2020-07-31 01:19:15 UTC))
        .is_err());
}

#[test]
fn another_root_is_not_trusted() {
    let pki = generate(&TestPkiOptions::default()).unwrap();
    let config = |root: &str, middle: Vec<u8>| VerifierConfig {
        trust: paynotify_shared::scheme::unionpay::TrustConfig {
            root: root.as_bytes().to_vec(),
            middle,
            identity: UNIONPAY_IDENTITY.into(),
        },
        verify_certs: vec![],
        merchants: vec![YANSONGDA_MERCHANT.into()],
        body_format: BodyFormat::Form,
    };
    // The CFCA middle does not chain to another root: the configuration is refused.
    let cfca_middle = read_vector("unionpay/certs/acp_test_middle.cer");
    assert!(matches!(
        UnionPayVerifier::new(&config(&pki.root_pem, cfca_middle)),
        Err(VerifyError::UntrustedCertificate(_))
    ));
    // With another root and middle, the genuine message's certificate is untrusted.
    let other =
        UnionPayVerifier::new(&config(&pki.root_pem, pki.middle_pem.clone().into_bytes())).unwrap();
    let body = json_vector_form(BACKNOTIFY);
    assert!(matches!(
        other.verify(&body, YANSONGDA_AT),
        Err(VerifyError::UntrustedCertificate(_))
    ));
}

#[test]
fn merchant_signing_reproduces_the_yansongda_requests_byte_for_byte() {
    let signer = MerchantSigner::from_pkcs8(&read_vector(
        "unionpay/certs/acp_test_sign_2021-2026.key.pem",
    ))
    .unwrap();
    for i in 0..4 {
        let body = read_vector(&format!(
            "unionpay/yansongda-pay/signed_request_{i}.formurlencoded.txt"
        ));
        let original = parse_form(&body).unwrap();
        let mut fields = original.clone();
        fields.remove("signature");
        sign_fields(&signer, &mut fields).unwrap();
        assert_eq!(
            fields.get("signature"),
            original.get("signature"),
            "signed_request_{i}"
        );
    }
}

#[test]
fn version_500_uses_the_configured_certificate_chosen_by_cert_id() {
    let body = include_bytes!("fixtures/unionpay_5.0.0_request.txt");
    let merchant_cert = read_vector("unionpay/certs/acp_test_sign_2021-2026.cert.pem");
    let verifier = |certs: Vec<Vec<u8>>| {
        UnionPayVerifier::new(&VerifierConfig {
            trust: cfca_trust(UNIONPAY_IDENTITY),
            verify_certs: certs,
            merchants: vec![YANSONGDA_MERCHANT.into()],
            body_format: BodyFormat::Form,
        })
        .unwrap()
    };
    let at = datetime!(2024-01-05 15:00:00 +08:00);
    let v = verifier(vec![merchant_cert.clone()])
        .verify(body, at)
        .expect("5.0.0 verifies");
    assert_eq!(v.version, "5.0.0");
    assert_eq!(v.certificate.serial, "69903319369");
    assert_eq!(
        verifier(vec![]).verify(body, at).unwrap_err(),
        VerifyError::UnknownCertId("69903319369".into())
    );
    let tampered = String::from_utf8_lossy(body).replace("txnAmt=1&", "txnAmt=2&");
    assert_eq!(
        verifier(vec![merchant_cert.clone()])
            .verify(tampered.as_bytes(), at)
            .unwrap_err(),
        VerifyError::BadSignature
    );
    assert!(matches!(
        verifier(vec![merchant_cert]).verify(body, datetime!(2027-01-01 00:00:00 UTC)),
        Err(VerifyError::CertificateExpired { .. })
    ));
}

#[test]
fn unknown_merchant_is_rejected_after_a_valid_signature() {
    let verifier = UnionPayVerifier::new(&VerifierConfig {
        trust: cfca_trust(UNIONPAY_IDENTITY),
        verify_certs: vec![],
        merchants: vec!["000000000000000".into()],
        body_format: BodyFormat::Form,
    })
    .unwrap();
    let err = verifier
        .verify(&json_vector_form(BACKNOTIFY), YANSONGDA_AT)
        .unwrap_err();
    assert_eq!(err, VerifyError::UnknownMerchant(YANSONGDA_MERCHANT.into()));
    assert_eq!(err.step(), "merchant");
}
