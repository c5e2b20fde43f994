//! Amounts in integer minor units with an ISO 4217 currency.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An ISO 4217 alphabetic currency code, e.g. `CNY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

/// ISO 4217 numeric codes UnionPay sends in `currencyCode`, with their alphabetic code.
const NUMERIC: &[(&str, &str)] = &[
    ("036", "AUD"),
    ("124", "CAD"),
    ("156", "CNY"),
    ("344", "HKD"),
    ("392", "JPY"),
    ("410", "KRW"),
    ("446", "MOP"),
    ("458", "MYR"),
    ("554", "NZD"),
    ("643", "RUB"),
    ("702", "SGD"),
    ("756", "CHF"),
    ("764", "THB"),
    ("826", "GBP"),
    ("840", "USD"),
    ("901", "TWD"),
    ("978", "EUR"),
];

impl Currency {
    /// Parses a three-letter alphabetic code (case-insensitive).
    pub fn from_alpha(code: &str) -> Option<Self> {
        let b = code.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_alphabetic) {
            Some(Self([
                b[0].to_ascii_uppercase(),
                b[1].to_ascii_uppercase(),
                b[2].to_ascii_uppercase(),
            ]))
        } else {
            None
        }
    }

    /// Maps an ISO 4217 numeric code such as `156` to its currency.
    pub fn from_numeric(code: &str) -> Option<Self> {
        NUMERIC
            .iter()
            .find(|(n, _)| *n == code)
            .and_then(|(_, a)| Self::from_alpha(a))
    }

    /// Digits after the decimal point of its minor unit (ISO 4217): 0 for
    /// JPY and KRW, 3 for the dinars, 2 otherwise.
    pub fn minor_digits(&self) -> u32 {
        match self.as_str() {
            "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" => 0,
            "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => 3,
            _ => 2,
        }
    }

    /// `minor` units of this currency as a decimal: `1000` CNY is `10.00`.
    pub fn decimal(&self, minor: u64) -> String {
        let digits = self.minor_digits();
        if digits == 0 {
            return minor.to_string();
        }
        let scale = 10_u64.pow(digits);
        format!(
            "{}.{:0width$}",
            minor / scale,
            minor % scale,
            width = digits as usize
        )
    }

    /// The alphabetic code.
    pub fn as_str(&self) -> &str {
        // Constructed only from ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::from_alpha(&s).ok_or_else(|| format!("not an ISO 4217 code: {s:?}"))
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

/// An amount in minor units (fen, cents) of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub minor: u64,
    pub currency: Currency,
}

/// `10.00 CNY`: the decimal amount and the code, never a bare minor-unit count.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.currency.decimal(self.minor), self.currency)
    }
}

/// `minor` units of the currency named `code` as `10.00 CNY`; a code that is
/// not ISO 4217 prints its minor units as they are.
pub fn display_minor(minor: u64, code: &str) -> String {
    match Currency::from_alpha(code) {
        Some(c) => Money { minor, currency: c }.to_string(),
        None => format!("{minor} (minor units) {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_numeric_codes() {
        assert_eq!(Currency::from_numeric("156").unwrap().as_str(), "CNY");
        assert_eq!(Currency::from_numeric("840").unwrap().as_str(), "USD");
        assert!(Currency::from_numeric("999").is_none());
        assert!(Currency::from_alpha("C1Y").is_none());
        assert_eq!(Currency::from_alpha("eur").unwrap().as_str(), "EUR");
    }

    #[test]
    fn amounts_print_as_decimals_in_their_minor_unit() {
        let money = |minor, code| Money {
            minor,
            currency: Currency::from_alpha(code).unwrap(),
        };
        assert_eq!(money(1000, "CNY").to_string(), "10.00 CNY");
        assert_eq!(money(5, "USD").to_string(), "0.05 USD");
        assert_eq!(money(0, "EUR").to_string(), "0.00 EUR");
        assert_eq!(money(1000, "JPY").to_string(), "1000 JPY");
        assert_eq!(money(1234, "KWD").to_string(), "1.234 KWD");
        assert_eq!(display_minor(1999, "CNY"), "19.99 CNY");
    }
}
