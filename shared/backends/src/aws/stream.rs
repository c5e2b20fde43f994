//! The ledger table's stream as the outbox (DESIGN §8, docs/events.md): each
//! write of a payment's item is one stream record with the item before and
//! after it (`NEW_AND_OLD_IMAGES`), and the outgoing events of that write
//! are read from the two images, never written a second time.
//!
//! What the write recorded is what the item gained: the events past the
//! old image's count (inline in the new image, or in the overflow item the
//! same transaction wrote, which never changes once written), and the
//! conflicting parked events the write found (`attention`, which each
//! write sets or removes). The states are the images' own. The events are
//! then [`outgoing_events`] of the write so rebuilt: the same ids and bodies
//! the embedded backend's outbox records for the same write (the recorded
//! time is the write's `updated_at`).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::describe;
use super::ledger::{get_n, get_s, overflow_sk, s, state_of, stored_events, STATE};
use crate::event::PaymentKey;
use crate::outgoing::OutgoingEvent;
use crate::ports::{
    outgoing_events, Incoming, LedgerWrite, ParkedEntry, ParkedEvent, RecordedEvent,
};
use crate::state::PaymentStatus;
use crate::stored_time;

/// An item as a stream record shows it.
pub type Image = HashMap<String, AttributeValue>;

/// One record of a DynamoDB stream, as Lambda hands it to a function and as
/// `GetRecords` returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct StreamRecord {
    #[serde(rename = "eventName")]
    pub event_name: String,
    pub dynamodb: StreamData,
}

/// The change a stream record describes.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamData {
    pub sequence_number: String,
    #[serde(default)]
    pub keys: HashMap<String, Value>,
    #[serde(default)]
    pub new_image: Option<HashMap<String, Value>>,
    #[serde(default)]
    pub old_image: Option<HashMap<String, Value>>,
}

/// Why a stream record gave no events.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The record or the items it names cannot be read as the ledger wrote
    /// them: no retry changes that (the record is reported and kept for an
    /// operator).
    #[error("stream record {sequence}: {why}")]
    Invalid { sequence: String, why: String },
    /// The table could not be read (the overflow item): try again.
    #[error("stream record {sequence}: {why}")]
    Unavailable { sequence: String, why: String },
}

impl StreamError {
    /// Whether trying the record again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// An attribute value in DynamoDB's JSON form (`{"S": "…"}`) as the SDK's.
///
/// # Errors
/// A value that is not one of DynamoDB's types.
pub fn attribute(v: &Value) -> Result<AttributeValue, String> {
    use base64::Engine as _;
    let obj = v
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| format!("not an attribute value: {v}"))?;
    let (t, inner) = obj.iter().next().ok_or("an empty attribute value")?;
    let text = || {
        inner
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{t} is not a string"))
    };
    let texts = || -> Result<Vec<String>, String> {
        inner
            .as_array()
            .ok_or_else(|| format!("{t} is not a list"))?
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{t} holds a non-string"))
            })
            .collect()
    };
    let bytes = |b: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(aws_sdk_dynamodb::primitives::Blob::new)
            .map_err(|e| format!("{t}: {e}"))
    };
    Ok(match t.as_str() {
        "S" => AttributeValue::S(text()?),
        "N" => AttributeValue::N(text()?),
        "B" => AttributeValue::B(bytes(&text()?)?),
        "SS" => AttributeValue::Ss(texts()?),
        "NS" => AttributeValue::Ns(texts()?),
        "BS" => AttributeValue::Bs(
            texts()?
                .iter()
                .map(|b| bytes(b))
                .collect::<Result<_, _>>()?,
        ),
        "BOOL" => AttributeValue::Bool(inner.as_bool().ok_or("BOOL is not a boolean")?),
        "NULL" => AttributeValue::Null(true),
        "L" => AttributeValue::L(
            inner
                .as_array()
                .ok_or("L is not a list")?
                .iter()
                .map(attribute)
                .collect::<Result<_, _>>()?,
        ),
        "M" => AttributeValue::M(image(inner.as_object().ok_or("M is not a map")?.iter())?),
        other => return Err(format!("unknown attribute type {other}")),
    })
}

fn image<'a>(attributes: impl Iterator<Item = (&'a String, &'a Value)>) -> Result<Image, String> {
    attributes
        .map(|(k, v)| Ok((k.clone(), attribute(v)?)))
        .collect()
}

/// Reads the outgoing events of the ledger's stream records.
#[derive(Debug, Clone)]
pub struct LedgerStream {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl LedgerStream {
    /// A reader of `table`'s records (the overflow items are read from it).
    pub fn new(clients: &super::Clients, table: &str) -> Self {
        Self {
            client: clients.dynamodb.clone(),
            table: table.to_owned(),
        }
    }

    /// The outgoing events of the write `record` describes, in order: none
    /// for a record of any item but a payment's, an alias, a removal or a
    /// write that changed no state.
    ///
    /// # Errors
    /// [`StreamError::Invalid`] for a record or item the ledger cannot have
    /// written; [`StreamError::Unavailable`] when the overflow item could
    /// not be read.
    pub async fn events(&self, record: &StreamRecord) -> Result<Vec<OutgoingEvent>, StreamError> {
        let sequence = &record.dynamodb.sequence_number;
        let invalid = |why: String| StreamError::Invalid {
            sequence: sequence.clone(),
            why,
        };
        let Some(new) = &record.dynamodb.new_image else {
            return Ok(Vec::new());
        };
        let new = image(new.iter()).map_err(invalid)?;
        let old = match &record.dynamodb.old_image {
            Some(old) => image(old.iter()).map_err(invalid)?,
            None => Image::new(),
        };
        if get_s(&new, "sk") != Some(STATE) || new.contains_key("alias_of") {
            return Ok(Vec::new());
        }
        let pk = get_s(&new, "pk")
            .ok_or_else(|| invalid("a payment's item without pk".into()))?
            .to_owned();
        let (old_count, new_count) = (count(&old), count(&new));
        let gained = new_count.checked_sub(old_count).ok_or_else(|| {
            invalid(format!(
                "{pk}: the item counts fewer events ({new_count}) than before ({old_count})"
            ))
        })?;
        let inline_before = stored_events(&old)
            .map_err(|e| invalid(e.to_string()))?
            .len() as u64;
        let inline = stored_events(&new).map_err(|e| invalid(e.to_string()))?;
        let recorded = if gained == 0 {
            Vec::new()
        } else if inline.len() as u64 == inline_before + gained {
            inline.into_iter().skip(inline_before as usize).collect()
        } else {
            let spilled = self.overflow(&pk, old_count, sequence).await?;
            if spilled.len() as u64 != gained {
                return Err(invalid(format!(
                    "{pk}: the write recorded {gained} events, its overflow item holds {}",
                    spilled.len()
                )));
            }
            spilled
        };
        let unparked = recorded
            .into_iter()
            .map(|r| {
                let status_after = match &r.status_after {
                    Some(st) => Some(
                        PaymentStatus::parse(st)
                            .ok_or_else(|| invalid(format!("{pk}: stored status {st:?}")))?,
                    ),
                    None => None,
                };
                Ok(RecordedEvent {
                    event: r
                        .event
                        .ok_or_else(|| invalid(format!("{pk}: an event without its fields")))?,
                    notification_id: r.notification_id,
                    status_after,
                    unparked_from: None,
                })
            })
            .collect::<Result<Vec<_>, StreamError>>()?;
        let key = PaymentKey::from_stored(pk.clone());
        let conflicts = attention(&new)
            .map_err(|why| invalid(format!("{pk}: {why}")))?
            .into_iter()
            .map(|parked| ParkedEntry {
                payment_key: key.clone(),
                parked,
            })
            .collect();
        let version = |item: &Image| get_n(item, "version").unwrap_or(0) as u64;
        let (before, after) = (version(&old), version(&new));
        let previous = state_of(&old, &key).map_err(|e| invalid(e.to_string()))?;
        let state = state_of(&new, &key).map_err(|e| invalid(e.to_string()))?;
        let write = LedgerWrite {
            key,
            expected_version: before,
            incoming: Incoming::Nothing,
            state: (after != before).then_some(state).flatten(),
            unparked,
            conflicts,
            aliases: Vec::new(),
        };
        let recorded_at = get_n(&new, "updated_at")
            .map(stored_time)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Ok(outgoing_events(
            previous.as_ref(),
            &write,
            get_s(&new, "gsi_order"),
            recorded_at,
        ))
    }

    /// The events of the overflow item a write that found `first` events
    /// recorded spilled to, read consistently.
    async fn overflow(
        &self,
        pk: &str,
        first: u64,
        sequence: &str,
    ) -> Result<Vec<crate::ports::EventRecord>, StreamError> {
        let sk = overflow_sk(first);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StreamError::Unavailable {
                sequence: sequence.to_owned(),
                why: format!("reading {pk} {sk}: {}", describe(&e)),
            })?;
        let item = out.item.ok_or_else(|| StreamError::Invalid {
            sequence: sequence.to_owned(),
            why: format!("{pk}: the overflow item {sk} its write spilled to is missing"),
        })?;
        stored_events(&item).map_err(|e| StreamError::Invalid {
            sequence: sequence.to_owned(),
            why: e.to_string(),
        })
    }
}

/// The events an item counts (`recorded`; 0 before the first).
fn count(item: &Image) -> u64 {
    get_n(item, "recorded").unwrap_or(0) as u64
}

/// The conflicting parked events an item's write found.
fn attention(item: &Image) -> Result<Vec<ParkedEvent>, String> {
    let Some(list) = item.get("attention") else {
        return Ok(Vec::new());
    };
    list.as_l()
        .map_err(|_| "attention is not a list".to_owned())?
        .iter()
        .map(|v| {
            v.as_s()
                .ok()
                .and_then(|j| serde_json::from_str(j).ok())
                .ok_or_else(|| "a stored conflicting event is invalid".to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_in_json_read_as_the_sdk_types() {
        let v: Value = serde_json::json!({"M": {
            "s": {"S": "a"}, "n": {"N": "1.5"}, "l": {"L": [{"S": "x"}, {"NULL": true}]},
            "ss": {"SS": ["p", "q"]}, "b": {"B": "AAE="}, "t": {"BOOL": true}
        }});
        let AttributeValue::M(m) = attribute(&v).unwrap() else {
            panic!("not a map")
        };
        assert_eq!(m["s"], AttributeValue::S("a".into()));
        assert_eq!(m["n"], AttributeValue::N("1.5".into()));
        assert_eq!(
            m["l"],
            AttributeValue::L(vec![
                AttributeValue::S("x".into()),
                AttributeValue::Null(true)
            ])
        );
        assert_eq!(m["ss"], AttributeValue::Ss(vec!["p".into(), "q".into()]));
        assert_eq!(
            m["b"],
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(vec![0, 1]))
        );
        assert_eq!(m["t"], AttributeValue::Bool(true));
        for bad in [
            serde_json::json!({"S": 1}),
            serde_json::json!({"X": "a"}),
            serde_json::json!({"S": "a", "N": "1"}),
            serde_json::json!("a"),
            serde_json::json!({"B": "not base64!"}),
        ] {
            assert!(attribute(&bad).is_err(), "{bad}");
        }
    }
}
