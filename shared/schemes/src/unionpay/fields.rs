//! Parsing UnionPay bodies into fields, and the canonical string that is signed.
//!
//! Values are kept as the exact bytes the PSP sent (after percent-decoding for
//! form bodies): the canonical string is built from those bytes, so a message
//! in any charset hashes exactly as the PSP signed it. Text access decodes the
//! bytes with the charset the `encoding` field names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::VerifyError;

/// How a body is encoded on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded`, as UnionPay POSTs notifications.
    #[default]
    Form,
    /// UnionPay's raw `k=v&k=v` with unencoded values and `{..}`/`[..]` groups,
    /// as in synchronous API responses.
    Raw,
}

/// One field: raw bytes for the canonical string, text for everything else.
/// In UTF-8 messages (nearly all) the two are the same bytes, stored once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    text: String,
    /// The raw bytes, when the charset is not UTF-8.
    raw: Option<Vec<u8>>,
}

impl Field {
    fn utf8(text: String) -> Self {
        Self { text, raw: None }
    }

    fn raw(&self) -> &[u8] {
        self.raw.as_deref().unwrap_or(self.text.as_bytes())
    }
}

/// The fields of one message, ordered bytewise by key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fields {
    map: BTreeMap<Vec<u8>, Field>,
}

impl Fields {
    /// Builds fields from text pairs (UTF-8), rejecting duplicate keys.
    ///
    /// # Errors
    /// `DuplicateField` when a key repeats.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, VerifyError> {
        let raw = pairs.into_iter().map(|(k, v)| {
            (
                k.as_ref().as_bytes().to_vec(),
                v.as_ref().as_bytes().to_vec(),
            )
        });
        build(raw)
    }

    /// The text value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key.as_bytes()).map(|f| f.text.as_str())
    }

    /// The text value of a required field.
    ///
    /// # Errors
    /// `MissingField` when absent.
    pub fn require(&self, key: &'static str) -> Result<&str, VerifyError> {
        self.get(key).ok_or(VerifyError::MissingField(key))
    }

    /// Sets `key` to a UTF-8 value (used when signing).
    pub fn set(&mut self, key: &str, value: &str) {
        self.map
            .insert(key.as_bytes().to_vec(), Field::utf8(value.to_owned()));
    }

    /// Removes `key`, returning its text value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.map.remove(key.as_bytes()).map(|f| f.text)
    }

    /// Keys and text values in canonical order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        // Keys are checked to be printable ASCII when parsed.
        self.map
            .iter()
            .map(|(k, f)| (std::str::from_utf8(k).unwrap_or(""), f.text.as_str()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Encodes the fields as an `application/x-www-form-urlencoded` body.
    pub fn to_form_body(&self) -> String {
        let mut out = String::new();
        for (i, (k, f)) in self.map.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            percent_encode_into(k, &mut out);
            out.push('=');
            percent_encode_into(f.raw(), &mut out);
        }
        out
    }
}

impl Fields {
    /// The fields as UnionPay writes a synchronous answer: `k=v&…`, keys
    /// sorted, values as they are (no percent-encoding; read it back with
    /// [`parse_raw`]).
    pub fn to_raw_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (k, f)) in self.map.iter().enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            out.extend_from_slice(k);
            out.push(b'=');
            out.extend_from_slice(f.raw());
        }
        out
    }
}

/// The canonical string S of DESIGN §6: every field but `signature`, sorted
/// bytewise by key, `k=v` joined by `&`, values exactly as received.
pub fn canonical_string(fields: &Fields) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        fields
            .map
            .iter()
            .map(|(k, f)| k.len() + f.raw().len() + 2)
            .sum(),
    );
    for (k, f) in fields
        .map
        .iter()
        .filter(|(k, _)| k.as_slice() != b"signature")
    {
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(f.raw());
    }
    out
}

/// Parses an `application/x-www-form-urlencoded` body.
///
/// # Errors
/// `MalformedBody` for an empty body, a segment without `=`, an empty key, a
/// bad percent escape or text invalid in the declared charset;
/// `DuplicateField` for a repeated key; `UnsupportedEncoding` for a charset
/// other than UTF-8 or GBK/GB18030.
pub fn parse_form(body: &[u8]) -> Result<Fields, VerifyError> {
    if body.is_empty() {
        return Err(VerifyError::MalformedBody("empty body".into()));
    }
    let mut pairs = Vec::new();
    // Empty segments (`a=1&&b=2`, a trailing `&`) carry no field; servlet
    // containers skip them too.
    for segment in body.split(|&b| b == b'&').filter(|s| !s.is_empty()) {
        let eq = segment.iter().position(|&b| b == b'=').ok_or_else(|| {
            VerifyError::MalformedBody(format!("segment without '=': {:?}", preview(segment)))
        })?;
        let key = percent_decode(&segment[..eq])?;
        let value = percent_decode(&segment[eq + 1..])?;
        unambiguous(&key, &value)?;
        pairs.push((key, value));
    }
    build(pairs)
}

/// A decoded field must not carry what separates fields in the signed
/// string (values joined as `k=v&…` without escaping): a name with `&` or
/// `=`, or a value with `&` outside a `{…}`/`[…]` group, would let a holder
/// of a signed message move a field into its neighbour's value (or name)
/// and drop it, with the signature still valid. UnionPay writes such text
/// only inside groups (reserved fields like `{a=1&b=2}`); `=` alone in a
/// value (base64) cannot move a boundary, since no name holds one.
fn unambiguous(key: &[u8], value: &[u8]) -> Result<(), VerifyError> {
    if key.iter().any(|&b| b == b'&' || b == b'=') {
        return Err(VerifyError::MalformedBody(format!(
            "field name {:?} holds '&' or '=': the signed string would not tell it from a field boundary",
            preview(key)
        )));
    }
    let (mut depth, mut inside) = (0usize, false);
    for &b in value {
        match b {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'&' if depth == 0 => {
                return Err(VerifyError::MalformedBody(format!(
                    "field `{}` holds '&' outside a {{…}} or […] group: the signed string would not tell it from a field boundary",
                    String::from_utf8_lossy(key)
                )))
            }
            b'&' => inside = true,
            _ => {}
        }
    }
    if depth != 0 && inside {
        return Err(VerifyError::MalformedBody(format!(
            "field `{}` holds '&' in a group that never closes",
            String::from_utf8_lossy(key)
        )));
    }
    Ok(())
}

/// Parses UnionPay's raw response format: segments split on `&` and keys on the
/// first `=`, except inside a `{..}` or `[..]` group of a value; no decoding.
/// This mirrors the official SDK's `parseQString`.
///
/// # Errors
/// As [`parse_form`], except percent escapes are not interpreted.
pub fn parse_raw(body: &[u8]) -> Result<Fields, VerifyError> {
    if body.is_empty() {
        return Err(VerifyError::MalformedBody("empty body".into()));
    }
    let mut pairs = Vec::new();
    let mut key: Option<Vec<u8>> = None;
    let mut buf = Vec::new();
    let mut close: Option<u8> = None;
    let mut finish = |key: Option<Vec<u8>>, buf: &mut Vec<u8>| -> Result<(), VerifyError> {
        match key {
            Some(k) => pairs.push((k, std::mem::take(buf))),
            None if buf.is_empty() => {}
            None => {
                return Err(VerifyError::MalformedBody(format!(
                    "segment without '=': {:?}",
                    preview(buf)
                )))
            }
        }
        Ok(())
    };
    for &c in body {
        match (&key, close) {
            (None, _) if c == b'=' => key = Some(std::mem::take(&mut buf)),
            (None, _) if c == b'&' => finish(None, &mut buf)?,
            (None, _) => buf.push(c),
            (Some(_), Some(end)) => {
                if c == end {
                    close = None;
                }
                buf.push(c);
            }
            (Some(_), None) => match c {
                b'{' => {
                    close = Some(b'}');
                    buf.push(c);
                }
                b'[' => {
                    close = Some(b']');
                    buf.push(c);
                }
                b'&' => finish(key.take(), &mut buf)?,
                _ => buf.push(c),
            },
        }
    }
    if close.is_some() {
        return Err(VerifyError::MalformedBody(
            "unterminated '{' or '[' group".into(),
        ));
    }
    finish(key.take(), &mut buf)?;
    build(pairs)
}

/// Checks keys and duplicates, then decodes text in the declared charset.
fn build(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<Fields, VerifyError> {
    let mut raw: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (k, v) in pairs {
        if k.is_empty() {
            return Err(VerifyError::MalformedBody(
                "field with an empty name".into(),
            ));
        }
        if !k.iter().all(|b| b.is_ascii_graphic()) {
            return Err(VerifyError::MalformedBody(format!(
                "field name {:?} is not printable ASCII",
                preview(&k)
            )));
        }
        if raw.contains_key(&k) {
            return Err(VerifyError::DuplicateField(
                String::from_utf8_lossy(&k).into_owned(),
            ));
        }
        raw.insert(k, v);
    }
    let charset = match raw.get(b"encoding".as_slice()) {
        None => Charset::Utf8,
        Some(v) => Charset::from_label(v)?,
    };
    let mut map = BTreeMap::new();
    for (key, value) in raw {
        let invalid = || {
            VerifyError::MalformedBody(format!(
                "field `{}` is not valid {}",
                String::from_utf8_lossy(&key),
                charset.name()
            ))
        };
        let field = match charset {
            Charset::Utf8 => Field::utf8(String::from_utf8(value).map_err(|_| invalid())?),
            Charset::Gb18030 => Field {
                text: charset.decode(&value).ok_or_else(invalid)?,
                raw: Some(value),
            },
        };
        map.insert(key, field);
    }
    Ok(Fields { map })
}

#[derive(Clone, Copy)]
enum Charset {
    Utf8,
    Gb18030,
}

impl Charset {
    fn from_label(label: &[u8]) -> Result<Self, VerifyError> {
        match label.to_ascii_lowercase().as_slice() {
            b"utf-8" | b"utf8" => Ok(Self::Utf8),
            b"gbk" | b"gb2312" | b"gb18030" => Ok(Self::Gb18030),
            other => Err(VerifyError::UnsupportedEncoding(
                String::from_utf8_lossy(other).into_owned(),
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Utf8 => "UTF-8",
            Self::Gb18030 => "GB18030",
        }
    }

    fn decode(self, bytes: &[u8]) -> Option<String> {
        match self {
            Self::Utf8 => std::str::from_utf8(bytes).ok().map(str::to_owned),
            Self::Gb18030 => encoding_rs::GB18030
                .decode_without_bom_handling_and_without_replacement(bytes)
                .map(|c| c.into_owned()),
        }
    }
}

/// Form decoding: `+` is a space, `%XX` a byte; a malformed escape is an error
/// (the official SDK's `URLDecoder` rejects it too). Runs of plain bytes are
/// copied at once.
fn percent_decode(input: &[u8]) -> Result<Vec<u8>, VerifyError> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.iter().position(|&b| b == b'%' || b == b'+') {
        out.extend_from_slice(&rest[..at]);
        if rest[at] == b'+' {
            out.push(b' ');
            rest = &rest[at + 1..];
            continue;
        }
        let byte = match rest.get(at + 1..at + 3) {
            Some(&[hi, lo]) => hex_value(hi).zip(hex_value(lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        let byte = byte.ok_or_else(|| {
            VerifyError::MalformedBody(format!(
                "bad percent escape near {:?}",
                preview(&rest[at..])
            ))
        })?;
        out.push(byte);
        rest = &rest[at + 3..];
    }
    out.extend_from_slice(rest);
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_encode_into(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A short, printable excerpt of untrusted input for error messages.
fn preview(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(32)]).into_owned();
    if bytes.len() > 32 {
        format!("{s}…")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decodes_plus_and_percent() {
        let f = parse_form(b"b=x%2By+z&a=%E4%B8%AD&encoding=UTF-8").unwrap();
        assert_eq!(f.get("b"), Some("x+y z"));
        assert_eq!(f.get("a"), Some("中"));
        assert_eq!(
            canonical_string(&f),
            "a=中&b=x+y z&encoding=UTF-8".as_bytes()
        );
    }

    #[test]
    fn form_rejects_bad_input() {
        assert!(matches!(
            parse_form(b""),
            Err(VerifyError::MalformedBody(_))
        ));
        assert!(matches!(
            parse_form(b"a=1&b"),
            Err(VerifyError::MalformedBody(_))
        ));
        assert!(matches!(
            parse_form(b"=1"),
            Err(VerifyError::MalformedBody(_))
        ));
        assert!(matches!(
            parse_form(b"a=%4"),
            Err(VerifyError::MalformedBody(_))
        ));
        assert!(matches!(
            parse_form(b"a=%zz"),
            Err(VerifyError::MalformedBody(_))
        ));
        assert!(matches!(
            parse_form(b"a=%FF"),
            Err(VerifyError::MalformedBody(_))
        ));
        assert!(matches!(parse_form(b"a=1&a=1"), Err(VerifyError::DuplicateField(k)) if k == "a"));
        assert!(matches!(
            parse_form(b"a=1&encoding=latin1"),
            Err(VerifyError::UnsupportedEncoding(_))
        ));
        assert!(matches!(
            parse_form(b"a%20b=1"),
            Err(VerifyError::MalformedBody(_))
        ));
    }

    #[test]
    fn gbk_is_decoded_for_text_but_hashed_raw() {
        // "中" in GBK is D6 D0.
        let f = parse_form(b"encoding=GBK&respMsg=%D6%D0").unwrap();
        assert_eq!(f.get("respMsg"), Some("中"));
        assert_eq!(canonical_string(&f), b"encoding=GBK&respMsg=\xD6\xD0");
    }

    #[test]
    fn raw_parser_keeps_groups_together() {
        let f = parse_raw(b"a={x=1&y=2}&b=[p&q]&c=d=e").unwrap();
        assert_eq!(f.get("a"), Some("{x=1&y=2}"));
        assert_eq!(f.get("b"), Some("[p&q]"));
        assert_eq!(f.get("c"), Some("d=e"));
        assert!(matches!(
            parse_raw(b"a={x"),
            Err(VerifyError::MalformedBody(_))
        ));
        assert!(matches!(
            parse_raw(b"a=1&a=2"),
            Err(VerifyError::DuplicateField(_))
        ));
        assert!(matches!(
            parse_raw(b"abc&a=1"),
            Err(VerifyError::MalformedBody(_))
        ));
    }

    #[test]
    fn form_round_trips() {
        let f = Fields::from_pairs([("k", "{a b&c=d}+中=="), ("encoding", "utf-8")]).unwrap();
        assert_eq!(parse_form(f.to_form_body().as_bytes()).unwrap(), f);
    }

    #[test]
    fn form_fields_that_would_move_a_boundary_are_refused() {
        for body in [
            "k=a%26c%3Dd&encoding=utf-8", // '&' in a value
            "k=%7Ba%7D%26c%3Dd",          // after a group closed
            "k=%7Ba%26c%3Dd",             // in a group that never closes
            "k%3Da%26c=d",                // '&' and '=' in a name
            "k%3Da=d",                    // '=' in a name
        ] {
            assert!(
                matches!(
                    parse_form(body.as_bytes()),
                    Err(VerifyError::MalformedBody(_))
                ),
                "{body}"
            );
        }
        // Inside a group, and '=' in a value (base64), as UnionPay sends them.
        let f = parse_form(b"reserved=%7Ba%3D1%26b%3D2%7D&cert=MII%3D%3D").unwrap();
        assert_eq!(f.get("reserved"), Some("{a=1&b=2}"));
        assert_eq!(f.get("cert"), Some("MII=="));
    }
}
