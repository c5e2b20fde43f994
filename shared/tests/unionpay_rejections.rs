//! Every way a UnionPay notification can be bad gets the right error, never a panic.

use paynotify_shared::config::UNIONPAY_IDENTITY;
use paynotify_shared::scheme::unionpay::{
    parse_form, sign_fields, BodyFormat, MerchantSigner, TrustConfig, UnionPayVerifier,
    VerifierConfig, VerifyError,
};
use paynotify_shared::testing::*;
use paynotify_shared::testpki::{generate, TestPki, TestPkiOptions};
use time::OffsetDateTime;

const BACKNOTIFY: &str = "unionpay/yansongda-pay/backnotify_purchase_20220908.json";

fn verify(body: &[u8]) -> Result<(), VerifyError> {
    yansongda_verifier(BodyFormat::Form)
        .verify(body, YANSONGDA_AT)
        .map(|_| ())
}

fn genuine() -> Vec<u8> {
    json_vector_form(BACKNOTIFY)
}

#[test]
fn one_whitespace_byte_anywhere_is_rejected() {
    let verifier = yansongda_verifier(BodyFormat::Form);
    let body = genuine();
    assert!(verifier.verify(&body, YANSONGDA_AT).is_ok());
    for ws in [b' ', b'\t', b'\n', b'\r'] {
        for pos in 0..=body.len() {
            let mut b = body.clone();
            b.insert(pos, ws);
            let result = verifier.verify(&b, YANSONGDA_AT);
            assert!(result.is_err(), "accepted {ws:?} inserted at {pos}");
        }
    }
    // Whitespace inside the decoded signature (a lenient base64 decoder would skip it).
    let mut fields = parse_form(&body).unwrap();
    let sig = fields.get("signature").unwrap().to_owned();
    fields.set("signature", &format!("{}\n{}", &sig[..64], &sig[64..]));
    assert_eq!(
        verify(fields.to_form_body().as_bytes()),
        Err(VerifyError::MalformedSignature)
    );
}

#[test]
fn removing_any_field_is_rejected_with_a_reason() {
    let fields = json_vector_fields(BACKNOTIFY);
    for (key, _) in fields.iter() {
        let mut f = fields.clone();
        f.remove(key);
        let err = verify(f.to_form_body().as_bytes()).unwrap_err();
        let expected = match key {
            "signature" | "version" | "signMethod" | "signPubKeyCert" => {
                VerifyError::MissingField(match key {
                    "signature" => "signature",
                    "version" => "version",
                    "signMethod" => "signMethod",
                    _ => "signPubKeyCert",
                })
            }
            _ => VerifyError::BadSignature,
        };
        assert_eq!(err, expected, "removed {key}");
    }
}

#[test]
fn duplicated_fields_are_rejected() {
    let body = genuine();
    for extra in [
        "&txnAmt=1",
        "&signature=AAAA",
        "&merId=777290058167151",
        "&encoding=utf-8",
    ] {
        let mut b = body.clone();
        b.extend_from_slice(extra.as_bytes());
        assert!(
            matches!(verify(&b), Err(VerifyError::DuplicateField(_))),
            "{extra}"
        );
    }
}

#[test]
fn bad_signatures_are_named() {
    let fields = json_vector_fields(BACKNOTIFY);
    for (bad, expected) in [
        ("not base64!", VerifyError::MalformedSignature),
        ("", VerifyError::BadSignature),
        ("AAAA", VerifyError::BadSignature),
    ] {
        let mut f = fields.clone();
        f.set("signature", bad);
        assert_eq!(
            verify(f.to_form_body().as_bytes()),
            Err(expected),
            "{bad:?}"
        );
    }
    let mut f = fields.clone();
    f.set("signMethod", "11");
    assert!(matches!(
        verify(f.to_form_body().as_bytes()),
        Err(VerifyError::UnsupportedSignMethod { .. })
    ));
    let mut f = fields.clone();
    f.set(
        "signPubKeyCert",
        "-----BEGIN CERTIFICATE-----\r\nAAAA\r\n-----END CERTIFICATE-----",
    );
    assert!(matches!(
        verify(f.to_form_body().as_bytes()),
        Err(VerifyError::MalformedCertificate(_))
    ));
}

#[test]
fn non_utf8_empty_truncated_and_oversized_bodies_are_rejected() {
    let body = genuine();
    assert!(matches!(verify(b""), Err(VerifyError::MalformedBody(_))));
    let mut raw_ff = body.clone();
    raw_ff.extend_from_slice(b"&x=\xff\xfe");
    assert!(matches!(
        verify(&raw_ff),
        Err(VerifyError::MalformedBody(_))
    ));
    let mut pct_ff = body.clone();
    pct_ff.extend_from_slice(b"&x=%FF");
    assert!(matches!(
        verify(&pct_ff),
        Err(VerifyError::MalformedBody(_))
    ));
    for cut in [1, 10, body.len() / 2, body.len() - 1] {
        assert!(verify(&body[..cut]).is_err(), "truncated to {cut}");
    }
    let huge = vec![b'a'; 1 << 20];
    assert!(matches!(verify(&huge), Err(VerifyError::MalformedBody(_))));
    let mut padded = body.clone();
    padded.extend_from_slice(b"&reserved=");
    padded.resize(1 << 20, b'x');
    assert_eq!(verify(&padded), Err(VerifyError::BadSignature));
    let mut binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    binary.insert(0, b'=');
    assert!(verify(&binary).is_err());
}

/// Fields shaped like a UnionPay purchase notification, signed with `pki`'s leaf.
fn signed_with(pki: &TestPki) -> Vec<u8> {
    let mut f = json_vector_fields(BACKNOTIFY);
    f.set("signPubKeyCert", &pki.leaf_pem);
    sign_fields(
        &MerchantSigner::from_pkcs8(pki.leaf_key_pem.as_bytes()).unwrap(),
        &mut f,
    )
    .unwrap();
    f.to_form_body().into_bytes()
}

fn verifier_trusting(pki: &TestPki) -> UnionPayVerifier {
    UnionPayVerifier::new(&VerifierConfig {
        trust: TrustConfig {
            root: pki.root_pem.clone().into_bytes(),
            middle: pki.middle_pem.clone().into_bytes(),
            identity: UNIONPAY_IDENTITY.into(),
        },
        verify_certs: vec![],
        merchants: vec![YANSONGDA_MERCHANT.into()],
        body_format: BodyFormat::Form,
    })
    .unwrap()
}

#[test]
fn test_pki_messages_verify_only_under_their_own_root_and_identity() {
    let pki = generate(&TestPkiOptions::default()).unwrap();
    let now = OffsetDateTime::now_utc();
    let body = signed_with(&pki);
    verifier_trusting(&pki)
        .verify(&body, now)
        .expect("test PKI message verifies under its root");
    // A leaf from an untrusted middle, as seen by the CFCA configuration.
    assert!(matches!(
        yansongda_verifier(BodyFormat::Form).verify(&body, now),
        Err(VerifyError::UntrustedCertificate(_))
    ));
    // A leaf from another PKI's middle, with the same names.
    let other = generate(&TestPkiOptions::default()).unwrap();
    assert!(matches!(
        verifier_trusting(&other).verify(&body, now),
        Err(VerifyError::UntrustedCertificate(_))
    ));
    // The right chain, the wrong CN identity.
    let wrong_cn = generate(&TestPkiOptions {
        identity: "某某支付有限公司".into(),
        ..TestPkiOptions::default()
    })
    .unwrap();
    let err = verifier_trusting(&wrong_cn)
        .verify(&signed_with(&wrong_cn), now)
        .unwrap_err();
    assert_eq!(
        err,
        VerifyError::IdentityMismatch {
            expected: UNIONPAY_IDENTITY.into(),
            found: "某某支付有限公司".into()
        }
    );
    assert_eq!(err.step(), "certificate");
}

#[test]
fn errors_name_their_step() {
    let cases: Vec<(VerifyError, &str)> = vec![
        (VerifyError::MalformedBody("x".into()), "parse"),
        (VerifyError::DuplicateField("x".into()), "parse"),
        (VerifyError::MissingField("signature"), "fields"),
        (VerifyError::MalformedSignature, "fields"),
        (VerifyError::UntrustedCertificate("x".into()), "certificate"),
        (VerifyError::BadSignature, "signature"),
        (VerifyError::UnknownMerchant("x".into()), "merchant"),
    ];
    for (e, step) in cases {
        assert_eq!(e.step(), step, "{e}");
        assert!(!e.name().is_empty());
    }
}
