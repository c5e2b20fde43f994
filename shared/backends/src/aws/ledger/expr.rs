//! DynamoDB update expressions built clause by clause, with their
//! placeholders.

use super::*;

/// One update expression under construction: its clauses and placeholders.
#[derive(Default)]
pub(super) struct Expr {
    pub(super) set: Vec<String>,
    pub(super) add: Vec<String>,
    pub(super) delete: Vec<String>,
    pub(super) remove: Vec<String>,
    pub(super) condition: Vec<String>,
    pub(super) names: HashMap<String, String>,
    pub(super) values: HashMap<String, AttributeValue>,
}

impl Expr {
    pub(super) fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#{}", attribute.replace('_', ""));
        self.names.insert(placeholder.clone(), attribute.to_owned());
        placeholder
    }

    pub(super) fn value(&mut self, name: &str, v: AttributeValue) -> String {
        let placeholder = format!(":{}", name.replace('_', ""));
        self.values.insert(placeholder.clone(), v);
        placeholder
    }

    /// The condition that a payment's item (or an alias key's) is at
    /// `expected`. Version 0 is no item, or one that only a record-only
    /// write made (an in-process answer, a failed refund before its
    /// payment), which keeps version 0.
    pub(super) fn version_is(&mut self, expected: u64) -> String {
        let version = self.name("version");
        if expected == 0 {
            let zero = self.value("zero", n(0));
            format!("(attribute_not_exists({version}) OR {version} = {zero})")
        } else {
            let v = self.value("v", n(expected));
            format!("{version} = {v}")
        }
    }

    /// Adds the digests `parked` to the item's `parked` set (events parked
    /// under it) and deletes `unparked` from it; an empty list changes
    /// nothing (DynamoDB refuses an empty set).
    pub(super) fn park_digests(&mut self, parked: Vec<String>, unparked: Vec<String>) {
        if !parked.is_empty() {
            let (a, d) = (
                self.name("parked"),
                self.value("pd", AttributeValue::Ss(parked)),
            );
            self.add.push(format!("{a} {d}"));
        }
        if !unparked.is_empty() {
            let (a, d) = (
                self.name("parked"),
                self.value("ud", AttributeValue::Ss(unparked)),
            );
            self.delete.push(format!("{a} {d}"));
        }
    }

    pub(super) fn update_expression(&self) -> String {
        let mut out = format!("SET {}", self.set.join(", "));
        if !self.add.is_empty() {
            out.push_str(&format!(" ADD {}", self.add.join(", ")));
        }
        if !self.delete.is_empty() {
            out.push_str(&format!(" DELETE {}", self.delete.join(", ")));
        }
        if !self.remove.is_empty() {
            out.push_str(&format!(" REMOVE {}", self.remove.join(", ")));
        }
        out
    }
}
