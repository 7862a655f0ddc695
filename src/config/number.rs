//! Phone numbers: the canonical E.164 form, normalisation of what carriers actually send, and
//! caller patterns (`+1415*`).
//!
//! Carriers write the dialed number in many ways: `+14155550100`, `14155550100`,
//! `0014155550100`, `tel:+1-415-555-0100`, `sip:+14155550100;user=phone@host` (the user part,
//! given here without the host), `(415) 555-0100` with a `phone-context`. [`normalize`] turns
//! all of them into one [`E164`] or says why it cannot.

use std::fmt;

use serde::Serialize;

/// A number in E.164 form: `+`, a first digit 1-9, 8 to 15 digits in all.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct E164(String);

/// Why a string is not a number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("is empty")]
    Empty,
    #[error("has the character {0:?}, which is not a digit or a visual separator")]
    BadCharacter(char),
    #[error("has {0} digits; E.164 numbers have 8 to 15")]
    Length(usize),
    #[error("starts with 0 after the country-code position; E.164 country codes start with 1-9")]
    LeadingZero,
}

impl E164 {
    /// Accepts only the canonical form (what the schema's pattern accepts).
    pub fn parse_canonical(s: &str) -> Result<E164, NumberError> {
        let digits = s
            .strip_prefix('+')
            .ok_or(NumberError::BadCharacter(s.chars().next().unwrap_or(' ')))?;
        if let Some(c) = digits.chars().find(|c| !c.is_ascii_digit()) {
            return Err(NumberError::BadCharacter(c));
        }
        check_digits(digits)?;
        Ok(E164(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without the leading `+`.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_digits(digits: &str) -> Result<(), NumberError> {
    if digits.is_empty() {
        return Err(NumberError::Empty);
    }
    if !(8..=15).contains(&digits.len()) {
        return Err(NumberError::Length(digits.len()));
    }
    if digits.starts_with('0') {
        return Err(NumberError::LeadingZero);
    }
    Ok(())
}

/// Normalises a dialed or calling number as carriers send it:
/// - a `tel:` or `sip:`/`sips:` scheme is dropped, and for a SIP URI everything from `@` on;
/// - URI parameters (`;user=phone`, `;phone-context=...`, `;npdi`) and headers are dropped;
/// - percent-encoded `%2B` is a `+`;
/// - visual separators (`-`, `.`, `(`, `)`, space) are dropped (RFC 3966 §5.1.1);
/// - a leading `00` (the international prefix used in most of the world) becomes `+`;
/// - digits without `+` are read as an international number (the `+` was omitted).
pub fn normalize(input: &str) -> Result<E164, NumberError> {
    let mut s = input.trim();
    for scheme in ["tel:", "sip:", "sips:", "TEL:", "SIP:", "SIPS:"] {
        if let Some(rest) = s.strip_prefix(scheme) {
            s = rest;
            break;
        }
    }
    if let Some(at) = s.find('@') {
        s = &s[..at];
    }
    if let Some(semi) = s.find([';', '?']) {
        s = &s[..semi];
    }
    let mut plus = false;
    let mut digits = String::with_capacity(s.len());
    let mut rest = s;
    if let Some(r) = rest.strip_prefix("%2B").or_else(|| rest.strip_prefix("%2b")) {
        plus = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        plus = true;
        rest = r;
    }
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '-' | '.' | '(' | ')' | ' ' => {}
            other => return Err(NumberError::BadCharacter(other)),
        }
        if digits.len() > 32 {
            return Err(NumberError::Length(digits.len()));
        }
    }
    if !plus && let Some(international) = digits.strip_prefix("00") {
        digits = international.to_string();
    }
    check_digits(&digits)?;
    Ok(E164(format!("+{digits}")))
}

/// A caller (From) pattern of `allowedCallers`: an exact number, a prefix (`+1415*`), or `*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum CallerPattern {
    Exact(E164),
    /// Digits (without `+`) the caller's number must start with; empty matches everyone.
    Prefix(String),
}

impl CallerPattern {
    /// Parses a pattern of the schema's form.
    pub fn parse(s: &str) -> Option<CallerPattern> {
        if s == "*" {
            return Some(CallerPattern::Prefix(String::new()));
        }
        if let Some(prefix) = s.strip_suffix('*') {
            let digits = prefix.strip_prefix('+')?;
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            return Some(CallerPattern::Prefix(digits.to_string()));
        }
        E164::parse_canonical(s).ok().map(CallerPattern::Exact)
    }

    pub fn matches(&self, caller: &E164) -> bool {
        match self {
            CallerPattern::Exact(n) => n == caller,
            CallerPattern::Prefix(p) => caller.digits().starts_with(p.as_str()),
        }
    }
}

impl From<CallerPattern> for String {
    fn from(p: CallerPattern) -> String {
        match p {
            CallerPattern::Exact(n) => n.0,
            CallerPattern::Prefix(p) if p.is_empty() => "*".to_string(),
            CallerPattern::Prefix(p) => format!("+{p}*"),
        }
    }
}
