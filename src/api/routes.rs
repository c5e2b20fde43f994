//! The read API's routes, once: the router is built from this table and so
//! is the OpenAPI document ([`document`], checked in as
//! `docs/api/openapi.json`), so neither can name a route the other lacks.

use paynotify_shared::config::ApiScope;
use serde_json::{json, Map, Value};

/// What a route does (its handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    OpenApi,
    Payment,
    PaymentsByOrder,
    SearchPayments,
    Notification,
    DeadLetters,
    DeadLetter,
    Redrive,
    Parked,
    Endpoints,
    Deliveries,
    Resend,
    Reconcile,
    ResolveParked,
    DeadLetterParked,
}

/// Where a parameter is.
#[derive(Debug, Clone, Copy)]
pub enum In {
    Path,
    Query,
    /// A query parameter the route needs.
    QueryRequired,
}

/// One route.
#[derive(Debug)]
pub struct Route {
    pub op: Op,
    /// `get` or `post`.
    pub method: &'static str,
    /// The path, parameters in braces (axum's form and OpenAPI's alike).
    pub path: &'static str,
    /// What a key needs: `read` for reads, `operate` for actions.
    pub scope: ApiScope,
    pub id: &'static str,
    pub summary: &'static str,
    pub params: &'static [(&'static str, In, &'static str)],
    /// The request body's schema, for actions.
    pub body: Option<&'static str>,
    /// The answer's schema.
    pub answer: &'static str,
    /// The error answers it may give besides 401 and 503.
    pub errors: &'static [u16],
}

const LIMIT: (&str, In, &str) = (
    "limit",
    In::Query,
    "At most this many (1 to 1000; 100 when absent).",
);

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    Route {
        op: Op::OpenApi,
        method: "get",
        path: "/api/v1/openapi.json",
        scope: ApiScope::Read,
        id: "openapi",
        summary: "This document.",
        params: &[],
        body: None,
        answer: "OpenApi",
        errors: &[],
    },
    Route {
        op: Op::Payment,
        method: "get",
        path: "/api/v1/payments/{source}/{merchant}/{reference}",
        scope: ApiScope::Read,
        id: "getPayment",
        summary: "A payment by the PSP's id: its state, every event with its notification, and what is parked.",
        params: &[
            ("source", In::Path, "The configured source (e.g. unionpay)."),
            ("merchant", In::Path, "The merchant id at the PSP (UnionPay merId)."),
            ("reference", In::Path, "The PSP's id of the payment (UnionPay queryId); a completion's own id leads to its payment."),
            ("expand", In::Query, "notifications: each event and parked event also gets archive_key (where the archive holds its notification) and verification (valid, or the failing step and why, verified again now); null for one that is not among the received notifications. A read of the archive per notification."),
        ],
        body: None,
        answer: "Payment",
        errors: &[400, 404],
    },
    Route {
        op: Op::PaymentsByOrder,
        method: "get",
        path: "/api/v1/payments",
        scope: ApiScope::Read,
        id: "findPayments",
        summary: "The payments of a merchant's order id (as the payment's first notification named it: UnionPay orderId, Adyen merchantReference, Stripe metadata.order_id), each as getPayment answers; several when an order was paid again after a failure. On AWS it reads an index that lags a write by a moment.",
        params: &[("order_id", In::QueryRequired, "The merchant's own order id.")],
        body: None,
        answer: "PaymentsOfOrder",
        errors: &[400],
    },
    Route {
        op: Op::SearchPayments,
        method: "get",
        path: "/api/v1/payments/search",
        scope: ApiScope::Read,
        id: "searchPayments",
        summary: "Payments by source, merchant, status and when they were last written, a page at a time: follow next (a cursor) until it is null. A page may hold fewer than limit, even none, while more follow (on DynamoDB a page scans a bounded part of the table).",
        params: &[
            ("source", In::Query, "Only this source's."),
            ("merchant", In::Query, "Only this merchant's (with source)."),
            ("status", In::Query, "Only payments in this status (AUTHORIZED, PAID, FAILED, PARTIALLY_REFUNDED, REFUNDED, VOIDED)."),
            ("from", In::Query, "Last written at or after this time (RFC 3339)."),
            ("to", In::Query, "Last written before this time (RFC 3339)."),
            ("cursor", In::Query, "The previous page's next."),
            LIMIT,
        ],
        body: None,
        answer: "PaymentSearchPage",
        errors: &[400],
    },
    Route {
        op: Op::Notification,
        method: "get",
        path: "/api/v1/notifications/{id}",
        scope: ApiScope::Read,
        id: "getNotification",
        summary: "One archived notification by its id (a payment event's notification_id): where the archive holds it, the request as received, and its verification at its receive time with the configuration now. Card numbers masked.",
        params: &[("id", In::Path, "The notification's id (a ULID).")],
        body: None,
        answer: "Notification",
        errors: &[404],
    },
    Route {
        op: Op::DeadLetters,
        method: "get",
        path: "/api/v1/dead-letters",
        scope: ApiScope::Read,
        id: "listDeadLetters",
        summary: "Dead letters: id, reason, receive count and archive key.",
        params: &[LIMIT],
        body: None,
        answer: "DeadLetterList",
        errors: &[400],
    },
    Route {
        op: Op::DeadLetter,
        method: "get",
        path: "/api/v1/dead-letters/{id}",
        scope: ApiScope::Read,
        id: "getDeadLetter",
        summary: "One dead letter (by its id or its notification's): the request it carries and, when it does not verify now, the failing step and every step (card numbers masked).",
        params: &[("id", In::Path, "The dead letter's id, or its notification id.")],
        body: None,
        answer: "DeadLetter",
        errors: &[400, 404],
    },
    Route {
        op: Op::Redrive,
        method: "post",
        path: "/api/v1/dead-letters/redrive",
        scope: ApiScope::Operate,
        id: "redriveDeadLetters",
        summary: "Moves dead letters (of one reason, or all) back to the queue, or with dry_run counts them by reason. Recorded under audit/api/ in the archive.",
        params: &[],
        body: Some("RedriveRequest"),
        answer: "RedriveResult",
        errors: &[400, 403],
    },
    Route {
        op: Op::Parked,
        method: "get",
        path: "/api/v1/parked",
        scope: ApiScope::Read,
        id: "listParked",
        summary: "Events parked in the ledger, waiting for their payment, oldest first, with any conflict.",
        params: &[LIMIT],
        body: None,
        answer: "ParkedList",
        errors: &[400],
    },
    Route {
        op: Op::ResolveParked,
        method: "post",
        path: "/api/v1/parked/resolve",
        scope: ApiScope::Operate,
        id: "resolveParked",
        summary: "Takes a parked event out of the ledger (a refund for a payment that will never arrive, a contradiction handled by hand), with the operator's note; recorded under audit/parked-resolved/ and audit/api/ in the archive, and counted by reconcile as resolved.",
        params: &[],
        body: Some("ResolveRequest"),
        answer: "ResolveResult",
        errors: &[400, 403, 404],
    },
    Route {
        op: Op::DeadLetterParked,
        method: "post",
        path: "/api/v1/parked/dead-letter",
        scope: ApiScope::Operate,
        id: "deadLetterParked",
        summary: "Sets a parked event aside: its notification becomes a dead letter (reason set_aside, pointing at its archived bytes, with the note) and the event leaves the ledger; a redrive brings it back once its payment can take it. 409 for an event with no received notification to redrive (a status query's or a settlement file's: resolve it instead).",
        params: &[],
        body: Some("ResolveRequest"),
        answer: "SetAsideResult",
        errors: &[400, 403, 404, 409],
    },
    Route {
        op: Op::Endpoints,
        method: "get",
        path: "/api/v1/deliveries/endpoints",
        scope: ApiScope::Read,
        id: "listEndpoints",
        summary: "Each webhook endpoint's status: last success, failing since, pending and dead-lettered (held) deliveries, lag, disabled.",
        params: &[],
        body: None,
        answer: "EndpointList",
        errors: &[],
    },
    Route {
        op: Op::Deliveries,
        method: "get",
        path: "/api/v1/deliveries",
        scope: ApiScope::Read,
        id: "listDeliveries",
        summary: "Deliveries of outgoing events, oldest event first (on AWS only held ones are kept: pending ones are messages on the webhook line).",
        params: &[
            ("endpoint", In::Query, "Only this endpoint's."),
            ("payment", In::Query, "Only this payment's (its key, source#merchant#reference)."),
            ("status", In::Query, "Only pending, delivered or dead_lettered ones."),
            LIMIT,
        ],
        body: None,
        answer: "DeliveryList",
        errors: &[400],
    },
    Route {
        op: Op::Resend,
        method: "post",
        path: "/api/v1/deliveries/resend",
        scope: ApiScope::Operate,
        id: "resendDelivery",
        summary: "Sends an event to an endpoint again (a held or dead-lettered one releases its payment's later events, in order). Recorded under audit/api/ in the archive.",
        params: &[],
        body: Some("ResendRequest"),
        answer: "ResendResult",
        errors: &[400, 403, 404],
    },
    Route {
        op: Op::Reconcile,
        method: "get",
        path: "/api/v1/reconcile/latest",
        scope: ApiScope::Read,
        id: "latestReconcile",
        summary: "The report of the last `paynotify reconcile` run: what was archived, in the ledger, parked, dead-lettered, and every discrepancy.",
        params: &[],
        body: None,
        answer: "ReconcileRecord",
        errors: &[404],
    },
];

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}

fn list_of(schema: &str) -> Value {
    json!({ "type": "array", "items": { "$ref": format!("#/components/schemas/{schema}") } })
}

/// The answers' and requests' schemas.
fn schemas() -> Value {
    let text = json!({ "type": "string" });
    let text_or_null = json!({ "type": ["string", "null"] });
    let decimal = json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$",
                          "description": "An amount as a decimal in its currency: \"10.00\"." });
    let time = json!({ "type": "string", "format": "date-time" });
    json!({
        "Error": object(&["error"], json!({ "error": text })),
        "OpenApi": { "type": "object", "description": "An OpenAPI 3.1 document." },
        "Payment": object(&["payment_key", "order_id", "state", "history", "parked"], json!({
            "payment_key": text,
            "order_id": { "type": ["string", "null"], "description": "The merchant's own order id, as the payment's first notification named it." },
            "state": { "oneOf": [{ "type": "null" }, object(&["status", "version", "currency", "paid", "refunded"], json!({
                "status": text, "version": { "type": "integer" }, "currency": text,
                "paid": decimal, "refunded": decimal, "authorized": decimal,
            }))] },
            "history": { "type": "array", "items": object(&["event_key", "kind", "outcome", "recorded_at", "notification_id"], json!({
                "event_key": text, "kind": text, "outcome": text, "recorded_at": time,
                "notification_id": text, "status_after": text_or_null,
                "amount": { "oneOf": [decimal, { "type": "null" }] },
                "archive_key": { "type": ["string", "null"], "description": "With expand=notifications: where the archive holds the notification." },
                "verification": { "oneOf": [{ "type": "null" }, object(&["valid"], json!({
                    "valid": { "type": "boolean" }, "error": text, "step": text, "message": text,
                }))], "description": "With expand=notifications: the notification verified again now." },
            })) },
            "parked": { "type": "array", "items": { "type": "object" } },
        })),
        "Notification": object(&["notification_id", "archive_key", "source", "received_at", "headers", "body_sha256", "verification"], json!({
            "notification_id": text, "archive_key": text, "source": text, "received_at": time,
            "remote_addr": text_or_null, "method": text, "path": text,
            "headers": { "type": "array", "items": { "type": "array", "items": text, "minItems": 2, "maxItems": 2 } },
            "body": text_or_null, "body_b64": text_or_null, "body_sha256": text,
            "verification": object(&["valid"], json!({
                "valid": { "type": "boolean" }, "error": text, "step": text, "message": text,
                "event": {}, "explain": {},
            })),
        })),
        "PaymentSearchPage": object(&["payments", "next"], json!({
            "payments": { "type": "array", "items": object(&["payment_key", "order_id", "status", "currency", "paid", "refunded", "version", "updated_at"], json!({
                "payment_key": text, "order_id": text_or_null, "status": text, "currency": text,
                "authorized": decimal, "paid": decimal, "refunded": decimal,
                "version": { "type": "integer" }, "updated_at": time,
            })) },
            "next": text_or_null,
        })),
        "PaymentsOfOrder": object(&["order_id", "payments"], json!({
            "order_id": text, "payments": list_of("Payment"),
        })),
        "DeadLetterSummary": object(&["id", "reason", "receive_count", "dead_at"], json!({
            "id": text, "notification_id": text_or_null, "reason": text, "error": text,
            "receive_count": { "type": "integer" }, "dead_at": time, "archive_key": text_or_null,
        })),
        "DeadLetterList": list_of("DeadLetterSummary"),
        "DeadLetter": {
            "allOf": [{ "$ref": "#/components/schemas/DeadLetterSummary" }, object(&[], json!({
                "envelope": { "type": "object" },
                "verification": object(&["valid"], json!({
                    "valid": { "type": "boolean" }, "error": text, "step": text, "message": text,
                    "explain": {},
                })),
            }))],
        },
        "RedriveRequest": {
            "type": "object",
            "properties": {
                "reason": { "type": "string", "description": "Only dead letters with this reason (all when absent)." },
                "id": { "type": "string", "description": "Only this dead letter (its id or its notification's); not with reason." },
                "dry_run": { "type": "boolean", "description": "Count, by reason; move nothing." },
            },
            "additionalProperties": false,
        },
        "RedriveResult": object(&[], json!({
            "dry_run": { "type": "boolean" }, "would_redrive": { "type": "integer" },
            "by_reason": { "type": "object", "additionalProperties": { "type": "integer" } },
            "redriven": { "type": "integer" }, "still_in_dlq": { "type": "integer" },
        })),
        "ParkedList": { "type": "array", "items": object(&["payment_key", "event", "notification_id", "parked_at"], json!({
            "payment_key": text, "event": { "type": "object" }, "notification_id": text,
            "parked_at": time, "conflict": text_or_null,
        })) },
        "DeliveryList": { "type": "array", "items": object(&["endpoint", "status", "attempts", "event_id", "payment_key", "event_type"], json!({
            "endpoint": text, "status": { "enum": ["pending", "delivered", "dead_lettered"] },
            "attempts": { "type": "integer" }, "last_error": text_or_null,
            "event_id": text, "payment_key": text, "event_type": text,
            "body": { "type": "string", "description": "The event's JSON, as signed and sent." },
        })) },
        "ResendRequest": {
            "type": "object",
            "required": ["endpoint", "event_id"],
            "properties": { "endpoint": text, "event_id": text },
            "additionalProperties": false,
        },
        "ResendResult": object(&["resent"], json!({
            "resent": { "enum": ["again", "released"] }, "payment_key": text,
        })),
        "ResolveRequest": {
            "type": "object",
            "required": ["payment_key", "event_key", "note"],
            "properties": { "payment_key": text, "event_key": text, "note": { "type": "string", "minLength": 1 } },
            "additionalProperties": false,
        },
        "ResolveResult": object(&["notification_id", "payment_key", "event_key", "note", "resolved_at"], json!({
            "notification_id": text, "payment_key": text, "event_key": text, "kind": text,
            "amount": decimal, "conflict": text_or_null, "note": text, "by": text, "resolved_at": time,
        })),
        "SetAsideResult": object(&["notification_id", "payment_key", "event_key", "archive_key", "reason", "removed"], json!({
            "notification_id": text, "payment_key": text, "event_key": text, "archive_key": text,
            "reason": text, "note": text, "by": text, "removed": { "type": "boolean" },
            "dead_lettered_at": time,
        })),
        "ReconcileRecord": object(&["at", "clean", "report"], json!({
            "key": text, "at": time, "clean": { "type": "boolean" },
            "report": object(&["archived", "in_ledger", "discrepancies"], json!({
                "archived": { "type": "integer" }, "in_ledger": { "type": "integer" },
                "parked": { "type": "integer" }, "dead_lettered": { "type": "integer" },
                "discrepancies": { "type": "array", "items": object(&["kind", "subject", "detail"], json!({
                    "kind": text, "subject": text, "detail": text,
                })) },
            })),
        })),
        "EndpointList": { "type": "array", "items": object(&["endpoint", "url"], json!({
            "endpoint": text, "url": text, "pending": { "type": "integer" },
            "dead_lettered": { "type": "integer" }, "lag_secs": { "type": ["integer", "null"] },
            "disabled": text_or_null,
        })) },
    })
}

fn reference(schema: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{schema}") })
}

fn error_answer(why: &str) -> Value {
    json!({ "description": why, "content": { "application/json": { "schema": reference("Error") } } })
}

/// The OpenAPI 3.1 document of [`ROUTES`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({ "description": "OK", "content": { "application/json": { "schema": reference(r.answer) } } }),
        );
        responses.insert(
            "401".into(),
            error_answer("No key, or not a key of this API."),
        );
        for e in r.errors {
            let why = match e {
                400 => "A parameter or the body is not valid.",
                403 => "The key's scope does not allow it (actions need operate).",
                404 => "Not found.",
                _ => "Error.",
            };
            responses.insert(e.to_string(), error_answer(why));
        }
        responses.insert(
            "503".into(),
            error_answer("A store could not be reached; try again."),
        );
        let params: Vec<Value> = r
            .params
            .iter()
            .map(|(name, place, description)| match place {
                In::Path => json!({ "name": name, "in": "path", "required": true,
                                    "description": description, "schema": { "type": "string" } }),
                In::Query if *name == "limit" => json!({ "name": name, "in": "query", "required": false,
                                     "description": description,
                                     "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }),
                In::Query => json!({ "name": name, "in": "query", "required": false,
                                     "description": description, "schema": { "type": "string" } }),
                In::QueryRequired => json!({ "name": name, "in": "query", "required": true,
                                     "description": description, "schema": { "type": "string", "minLength": 1 } }),
            })
            .collect();
        let mut operation = json!({
            "operationId": r.id,
            "summary": r.summary,
            "x-scope": r.scope.as_str(),
            "parameters": params,
            "responses": responses,
        });
        if let Some(body) = r.body {
            operation["requestBody"] = json!({
                "required": false,
                "content": { "application/json": { "schema": reference(body) } },
            });
        }
        paths
            .entry(r.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a path item is an object")
            .insert(r.method.into(), operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "paynotify read API",
            "version": "1",
            "description": "The ledger, the dead letters, the parked events and the deliveries, for operators and the merchant's services (docs/api.md). Every request carries an API key: Authorization: Bearer KEY. A read key reads; an operate key also acts.",
        },
        "security": [{ "key": [] }],
        "components": {
            "securitySchemes": { "key": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
        },
        "paths": paths,
    })
}
