//! Logging and process signals shared by every binary.
//!
//! Every log line is one event together with the fields of each span it is
//! in, outermost first, flattened into the line: the span a notification's
//! processing runs in (see [`notification_span`](crate::notification_span)) gives every line of its
//! life `notification_id`, `source`, `psp_txn_id`, `unionpay_txn_id`,
//! `stage` and `direction` without repeating them at each call site.
//! Lines are JSON (one object per line) unless stderr is a terminal, where
//! they are text; `PAYNOTIFY_LOG_FORMAT=json|text` chooses. `RUST_LOG`
//! filters as usual.
//!
//! Card numbers never reach a log: in every value except the known
//! identifier fields, a run of 13 to 19 digits (spaces or dashes between
//! groups allowed) that passes the Luhn check keeps its first six and last
//! four digits and the rest becomes `*` ([`mask_card_numbers`]).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Fields whose values are identifiers, never masked: a UnionPay `queryId`
/// or merchant id may be 15 to 21 digits.
const IDENTIFIERS: &[&str] = &[
    "notification_id",
    "message_id",
    "source",
    "psp_txn_id",
    "unionpay_txn_id",
    "payment_ref",
    "payment_key",
    "event_key",
    "merchant",
];

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (CloudWatch Logs Insights discovers the fields).
    Json,
    /// `time LEVEL message key=value …`, for a terminal.
    Text,
}

impl LogFormat {
    /// `PAYNOTIFY_LOG_FORMAT` (`json` or `text`), else text on a terminal
    /// and JSON otherwise.
    pub fn from_env() -> Self {
        match std::env::var("PAYNOTIFY_LOG_FORMAT").as_deref() {
            Ok("json") => Self::Json,
            Ok("text") => Self::Text,
            _ if std::io::IsTerminal::is_terminal(&std::io::stderr()) => Self::Text,
            _ => Self::Json,
        }
    }
}

/// Logs to stderr in [`LogFormat::from_env`]; `RUST_LOG` overrides `default`.
pub fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(LineLayer::new(LogFormat::from_env(), std::io::stderr))
        .try_init();
}

/// The span one notification's processing runs in. Fields not known yet are
/// recorded later with `Span::record` (`stage` changes as it moves on). It is
/// an `error`-level span so that its fields are on every line, even when
/// only warnings are logged.
#[macro_export]
macro_rules! notification_span {
    ($stage:expr) => {
        tracing::error_span!(
            "notification",
            notification_id = tracing::field::Empty,
            message_id = tracing::field::Empty,
            source = tracing::field::Empty,
            psp_txn_id = tracing::field::Empty,
            unionpay_txn_id = tracing::field::Empty,
            stage = $stage,
            direction = "inbound",
        )
    };
}

/// Records the PSP's transaction id on the current notification span
/// (`psp_txn_id`, and the scheme's own field when it has one, e.g.
/// `unionpay_txn_id`: see [`crate::scheme::Scheme::txn_id_field`]).
pub fn record_txn_id(span: &tracing::Span, scheme_field: Option<&'static str>, txn_id: &str) {
    span.record("psp_txn_id", txn_id);
    if let Some(field) = scheme_field {
        span.record(field, txn_id);
    }
}

/// A layer that writes each event as one line with its spans' fields.
pub struct LineLayer<W> {
    format: LogFormat,
    writer: W,
}

impl<W> LineLayer<W> {
    /// Lines in `format`, each written whole to a writer from `writer`.
    pub fn new(format: LogFormat, writer: W) -> Self {
        Self { format, writer }
    }
}

/// The fields recorded on one span so far.
#[derive(Default)]
struct SpanFields(Vec<(&'static str, Value)>);

impl SpanFields {
    fn set(&mut self, name: &'static str, value: Value) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Visit for SpanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), Value::String(format!("{value:?}")));
    }
}

impl<S, W> Layer<S> for LineLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut own = SpanFields::default();
        event.record(&mut own);
        let spans: Vec<_> = ctx
            .event_scope(event)
            .map(Iterator::collect)
            .unwrap_or_default();
        let extensions: Vec<_> = spans.iter().map(|s| s.extensions()).collect();
        // Outermost span first; a field set again further in (or on the
        // event) keeps its first place and takes the inner value.
        let mut fields: Vec<(&str, &Value)> = Vec::with_capacity(16);
        let span_fields = extensions
            .iter()
            .rev()
            .filter_map(|e| e.get::<SpanFields>())
            .flat_map(|f| f.0.iter());
        for (name, value) in span_fields.chain(own.0.iter()) {
            match fields.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value,
                None => fields.push((name, value)),
            }
        }
        let meta = event.metadata();
        let line = match self.format {
            LogFormat::Json => json_line(meta, &fields),
            LogFormat::Text => text_line(meta, &fields),
        };
        let _ = self.writer.make_writer().write_all(&line);
    }
}

/// `value` with card numbers masked, unless `name` is an identifier.
fn masked<'a>(name: &str, value: &'a Value) -> Cow<'a, Value> {
    match value {
        Value::String(s) if !IDENTIFIERS.contains(&name) => match mask_card_numbers(s) {
            Cow::Borrowed(_) => Cow::Borrowed(value),
            Cow::Owned(m) => Cow::Owned(Value::String(m)),
        },
        _ => Cow::Borrowed(value),
    }
}

fn push_time(line: &mut Vec<u8>) {
    let _ = time::OffsetDateTime::now_utc().format_into(line, &Rfc3339);
}

fn json_line(meta: &tracing::Metadata<'_>, fields: &[(&str, &Value)]) -> Vec<u8> {
    // Written in order into one buffer, without building a map: every
    // notification writes two lines.
    let mut line = Vec::with_capacity(512);
    line.extend_from_slice(b"{\"timestamp\":\"");
    push_time(&mut line);
    line.extend_from_slice(b"\",\"level\":\"");
    line.extend_from_slice(meta.level().as_str().as_bytes());
    line.extend_from_slice(b"\",\"target\":");
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut line, meta.target());
    for (name, value) in fields {
        line.push(b',');
        let _ = serde_json::to_writer(&mut line, name);
        line.push(b':');
        let _ = serde_json::to_writer(&mut line, masked(name, value).as_ref());
    }
    line.extend_from_slice(b"}\n");
    line
}

fn text_line(meta: &tracing::Metadata<'_>, fields: &[(&str, &Value)]) -> Vec<u8> {
    let mut line = Vec::with_capacity(256);
    push_time(&mut line);
    let mut head = format!(" {:>5} ", meta.level().as_str());
    let mut rest = String::new();
    for (name, value) in fields {
        match masked(name, value).as_ref() {
            Value::String(s) if *name == "message" => head.push_str(s),
            Value::String(s) if s.contains(char::is_whitespace) || s.is_empty() => {
                let _ = write!(rest, " {name}={s:?}");
            }
            Value::String(s) => {
                let _ = write!(rest, " {name}={s}");
            }
            other => {
                let _ = write!(rest, " {name}={other}");
            }
        }
    }
    line.extend_from_slice(head.as_bytes());
    line.extend_from_slice(rest.as_bytes());
    line.push(b'\n');
    line
}

/// Masks card numbers in `text`: a run of 13 to 19 digits, in groups
/// separated by one space or dash, that passes the Luhn check keeps its
/// first six and last four digits; the others become `*` (separators are
/// dropped). Longer digit runs (identifiers) are left alone.
pub fn mask_card_numbers(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    if bytes.iter().filter(|b| b.is_ascii_digit()).count() < 13 {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let at_run_start = bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit());
        if !at_run_start {
            i += 1;
            continue;
        }
        match card_at(bytes, i) {
            Some((end, digits)) => {
                out.push_str(&text[copied..i]);
                out.push_str(&digits[..6]);
                out.extend(std::iter::repeat_n('*', digits.len() - 10));
                out.push_str(&digits[digits.len() - 4..]);
                copied = end;
                i = end;
            }
            None => {
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The card number starting at `start` (a run of digit groups), if any:
/// where it ends and its digits. The longest run of whole groups that is a
/// card wins; a group longer than 19 digits is not part of one.
fn card_at(bytes: &[u8], start: usize) -> Option<(usize, String)> {
    let mut digits = String::new();
    let mut best = None;
    let mut i = start;
    loop {
        let group_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        digits.push_str(std::str::from_utf8(&bytes[group_start..i]).unwrap_or_default());
        if digits.len() > 19 {
            break;
        }
        if digits.len() >= 13 && luhn(&digits) {
            best = Some((i, digits.clone()));
        }
        // One separator, then another group.
        if i + 1 < bytes.len() && matches!(bytes[i], b' ' | b'-') && bytes[i + 1].is_ascii_digit() {
            i += 1;
        } else {
            break;
        }
    }
    best
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests;
