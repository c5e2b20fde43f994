//! A stand-in for UnionPay's gateway, for tests and the demo. It checks the
//! merchant's signature on every request as UnionPay does, and answers from
//! a table of transactions it knows, signed with a test PKI:
//! - status queries (`POST /gateway/api/queryTrans.do`, by `orderId` +
//!   `txnTime` or by `queryId`): success, failure, in process (`05`), not
//!   found (`34`), or a scripted answer — unsigned, signed by a forged
//!   certificate, an HTTP 500;
//! - settlement files (`POST /`, `txnType=76`): the ZM records of the
//!   transactions that settled on the day asked, packed as UnionPay packs
//!   them.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use paynotify_shared::scheme::unionpay::{
    encode_file_content, parse_form, sign_fields, verify_request, write_zm, Fields, MerchantSigner,
    QueryTarget, ZmRecord,
};
use time::Date;
use tokio_util::sync::CancellationToken;

/// What UnionPay says about a known transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnState {
    Succeeded,
    /// Failed with this `origRespCode`.
    Failed(String),
    /// Still in process (`origRespCode` 03/04/05).
    InProcess(String),
}

/// A transaction the simulated gateway knows.
#[derive(Debug, Clone)]
pub struct Txn {
    pub mer_id: String,
    pub order_id: String,
    /// `YYYYMMDDhhmmss`, Beijing time.
    pub txn_time: String,
    pub query_id: String,
    /// `01` purchase, `04` refund, …
    pub txn_type: String,
    pub amount: u64,
    pub orig_query_id: Option<String>,
    pub state: TxnState,
    /// The clearing day it settles on.
    pub settle_date: Date,
}

/// A scripted answer that replaces the next normal one for a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    /// `origRespCode` 05.
    InProcess,
    /// `respCode` 34.
    NotFound,
    /// The normal answer without `signature`.
    Unsigned,
    /// The normal answer signed with a self-signed certificate that claims
    /// UnionPay's name.
    ForgedCertificate,
    /// HTTP 500.
    ServerError,
}

#[derive(Default)]
struct SimState {
    txns: Vec<Txn>,
    scripts: HashMap<String, VecDeque<Scripted>>,
    queries: usize,
    files: usize,
    rejected_requests: usize,
}

struct Inner {
    state: Mutex<SimState>,
    signer: MerchantSigner,
    leaf_pem: String,
    forger: MerchantSigner,
    forged_pem: String,
    merchant_cert: Vec<u8>,
}

/// A running simulated gateway.
pub struct GatewaySim {
    inner: Arc<Inner>,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl GatewaySim {
    /// Starts on a free loopback port. Answers are signed with `key_pem`
    /// and carry `leaf_pem`; requests must verify with `merchant_cert`.
    ///
    /// # Errors
    /// A key that cannot be read, a port that cannot be bound.
    pub async fn start(
        key_pem: &[u8],
        leaf_pem: &str,
        merchant_cert: &[u8],
    ) -> anyhow::Result<Self> {
        // A certificate that names UnionPay but chains to nothing trusted.
        let forged = paynotify_shared::testpki::generate(&Default::default())?;
        let inner = Arc::new(Inner {
            state: Mutex::new(SimState::default()),
            signer: MerchantSigner::from_pkcs8(key_pem)?,
            leaf_pem: leaf_pem.to_owned(),
            forger: MerchantSigner::from_pkcs8(forged.leaf_key_pem.as_bytes())?,
            forged_pem: forged.leaf_pem,
            merchant_cert: merchant_cert.to_vec(),
        });
        let app = Router::new()
            .route("/gateway/api/queryTrans.do", post(query))
            .route("/", post(file))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(Self {
            inner,
            addr,
            shutdown,
        })
    }

    /// `http://127.0.0.1:PORT`: both the gateway and the file host.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds (or replaces, by `queryId`) a transaction.
    pub fn add(&self, txn: Txn) {
        let mut s = self.lock();
        s.txns.retain(|t| t.query_id != txn.query_id);
        s.txns.push(txn);
    }

    /// Answers the next queries about the transaction with `query_id` (or
    /// about `order_id`) with these, in order, before normal answers.
    pub fn script(&self, id: &str, answers: impl IntoIterator<Item = Scripted>) {
        self.lock()
            .scripts
            .entry(id.to_owned())
            .or_default()
            .extend(answers);
    }

    /// Status queries answered so far (any answer).
    pub fn queries(&self) -> usize {
        self.lock().queries
    }

    /// Settlement files served so far.
    pub fn files(&self) -> usize {
        self.lock().files
    }

    /// Requests refused because the merchant's signature did not verify.
    pub fn rejected_requests(&self) -> usize {
        self.lock().rejected_requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for GatewaySim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The merchant's request, if its signature verifies.
    fn request(&self, body: &[u8]) -> Result<Fields, String> {
        let fields = parse_form(body).map_err(|e| e.to_string())?;
        verify_request(&fields, &self.merchant_cert).map_err(|e| {
            self.lock().rejected_requests += 1;
            e.to_string()
        })?;
        Ok(fields)
    }

    fn answer(&self, mut fields: Fields, forged: bool) -> Vec<u8> {
        let (signer, pem) = if forged {
            (&self.forger, &self.forged_pem)
        } else {
            (&self.signer, &self.leaf_pem)
        };
        fields.set("signPubKeyCert", pem);
        // Signing fails only for a version other than 5.1.0, never set here.
        let _ = sign_fields(signer, &mut fields);
        fields.to_raw_body()
    }
}

fn base(request: &Fields) -> Fields {
    let mut f = Fields::default();
    for k in [
        "version",
        "encoding",
        "signMethod",
        "txnType",
        "txnSubType",
        "bizType",
        "accessType",
        "merId",
    ] {
        if let Some(v) = request.get(k) {
            f.set(k, v);
        }
    }
    f
}

/// `respCode` 11: what the gateway says to a request whose signature fails.
fn refused(request: Option<&Fields>, why: &str) -> Fields {
    let mut f = request.map(base).unwrap_or_default();
    f.set("version", "5.1.0");
    f.set("signMethod", "01");
    f.set("respCode", "11");
    f.set("respMsg", &format!("验证签名失败 {why}"));
    f
}

async fn query(State(inner): State<Arc<Inner>>, body: Bytes) -> impl IntoResponse {
    inner.lock().queries += 1;
    let request = match inner.request(&body) {
        Ok(f) => f,
        Err(why) => return (StatusCode::OK, inner.answer(refused(None, &why), false)),
    };
    let target = match (
        request.get("queryId"),
        request.get("orderId"),
        request.get("txnTime"),
    ) {
        (Some(q), _, _) => QueryTarget::QueryId {
            query_id: q.to_owned(),
        },
        (None, Some(o), Some(t)) => QueryTarget::Order {
            order_id: o.to_owned(),
            txn_time: t.to_owned(),
        },
        _ => {
            return (
                StatusCode::OK,
                inner.answer(
                    refused(Some(&request), "no orderId/txnTime or queryId"),
                    false,
                ),
            )
        }
    };
    let mer_id = request.get("merId").unwrap_or("").to_owned();
    let (txn, scripted) = {
        let mut s = inner.lock();
        let txn = s
            .txns
            .iter()
            .find(|t| {
                t.mer_id == mer_id
                    && match &target {
                        QueryTarget::QueryId { query_id } => &t.query_id == query_id,
                        QueryTarget::Order { order_id, txn_time } => {
                            &t.order_id == order_id && &t.txn_time == txn_time
                        }
                    }
            })
            .cloned();
        let key = match (&txn, &target) {
            (Some(t), _) => t.query_id.clone(),
            (None, QueryTarget::QueryId { query_id }) => query_id.clone(),
            (None, QueryTarget::Order { order_id, .. }) => order_id.clone(),
        };
        let scripted = s.scripts.get_mut(&key).and_then(VecDeque::pop_front);
        (txn, scripted)
    };
    let mut f = base(&request);
    if scripted == Some(Scripted::ServerError) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            b"upstream failure".to_vec(),
        );
    }
    match (&txn, &scripted) {
        (None, _) | (_, Some(Scripted::NotFound)) => {
            f.set("respCode", "34");
            f.set("respMsg", "查无此交易[2600000]");
            if let QueryTarget::Order { order_id, txn_time } = &target {
                f.set("orderId", order_id);
                f.set("txnTime", txn_time);
            }
        }
        (Some(t), _) => {
            f.set("respCode", "00");
            f.set("respMsg", "成功[0000000]");
            f.set("txnType", &t.txn_type);
            f.set("txnSubType", "01");
            f.set("orderId", &t.order_id);
            f.set("txnTime", &t.txn_time);
            f.set("queryId", &t.query_id);
            f.set("txnAmt", &t.amount.to_string());
            f.set("currencyCode", "156");
            f.set(
                "settleDate",
                &format!(
                    "{:02}{:02}",
                    u8::from(t.settle_date.month()),
                    t.settle_date.day()
                ),
            );
            if let Some(orig) = &t.orig_query_id {
                f.set("origQryId", orig);
            }
            let state = if scripted == Some(Scripted::InProcess) {
                TxnState::InProcess("05".into())
            } else {
                t.state.clone()
            };
            let (code, msg) = match &state {
                TxnState::Succeeded => ("00".to_owned(), "成功[0000000]"),
                TxnState::Failed(c) => (c.clone(), "交易失败"),
                TxnState::InProcess(c) => (c.clone(), "交易处理中"),
            };
            f.set("origRespCode", &code);
            f.set("origRespMsg", msg);
            // As answers recorded from a gateway: a transaction that did not
            // succeed is named by its order alone.
            if state != TxnState::Succeeded {
                f.remove("queryId");
            }
        }
    }
    let mut answer = inner.answer(f, scripted == Some(Scripted::ForgedCertificate));
    if scripted == Some(Scripted::Unsigned) {
        let text = String::from_utf8_lossy(&answer).into_owned();
        answer = text
            .split('&')
            .filter(|kv| !kv.starts_with("signature="))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes();
    }
    (StatusCode::OK, answer)
}

async fn file(State(inner): State<Arc<Inner>>, body: Bytes) -> impl IntoResponse {
    let request = match inner.request(&body) {
        Ok(f) => f,
        Err(why) => return (StatusCode::OK, inner.answer(refused(None, &why), false)),
    };
    let mut f = base(&request);
    for k in ["settleDate", "fileType", "txnTime"] {
        if let Some(v) = request.get(k) {
            f.set(k, v);
        }
    }
    let mer_id = request.get("merId").unwrap_or("").to_owned();
    let mmdd = request.get("settleDate").unwrap_or("").to_owned();
    let records: Vec<ZmRecord> = {
        let mut s = inner.lock();
        s.files += 1;
        s.txns
            .iter()
            .filter(|t| {
                t.mer_id == mer_id
                    && t.state == TxnState::Succeeded
                    && format!(
                        "{:02}{:02}",
                        u8::from(t.settle_date.month()),
                        t.settle_date.day()
                    ) == mmdd
            })
            .enumerate()
            .map(|(i, t)| ZmRecord {
                line: i + 1,
                trade_code: if t.txn_type == "04" { "S30" } else { "S22" }.into(),
                trace_no: format!("{:06}", i + 1),
                trace_time: t.txn_time.get(4..14).unwrap_or("").to_owned(),
                amount_minor: t.amount,
                query_id: t.query_id.clone(),
                order_id: t.order_id.clone(),
                txn_type: t.txn_type.clone(),
                txn_sub_type: "01".into(),
                biz_type: "000201".into(),
                orig_query_id: t.orig_query_id.clone(),
                mer_id: t.mer_id.clone(),
            })
            .collect()
    };
    let stamp = format!("{}88", mmdd);
    let files = [
        (format!("INN{stamp}ZM_{mer_id}"), write_zm(&records)),
        (format!("INN{stamp}ZME_{mer_id}"), Vec::new()),
    ];
    match encode_file_content(&files) {
        Ok(content) => {
            f.set("respCode", "00");
            f.set("respMsg", "成功[0000000]");
            f.set("fileName", &format!("{mer_id}_{mmdd}.zip"));
            f.set("fileContent", &content);
        }
        Err(e) => {
            f.set("respCode", "03");
            f.set("respMsg", &format!("文件生成失败 {e}"));
        }
    }
    (StatusCode::OK, inner.answer(f, false))
}
