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
        check_canonical(s)?;
        Ok(E164(s.to_string()))
    }

    /// Whether [`E164::parse_canonical`] takes `s` (whose number is then `s` itself), without
    /// making the number.
    pub fn is_canonical(s: &str) -> bool {
        check_canonical(s).is_ok()
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

fn check_canonical(s: &str) -> Result<(), NumberError> {
    let Some(first) = s.chars().next() else {
        return Err(NumberError::Empty);
    };
    let digits = s.strip_prefix('+').ok_or(NumberError::BadCharacter(first))?;
    if let Some(c) = digits.chars().find(|c| !c.is_ascii_digit()) {
        return Err(NumberError::BadCharacter(c));
    }
    check_digits(digits)
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
/// - a `tel:` or `sip:`/`sips:` scheme (any case) is dropped, and for a SIP URI everything from
///   `@` on;
/// - URI parameters (`;user=phone`, `;npdi`) and headers are dropped, except that a local number
///   (no `+`) with a global `;phone-context=+1` gets the context's digits in front (RFC 3966
///   §5.1.5); a domain context says nothing about the country and is ignored;
/// - a `+` (or percent-encoded `%2B`) may come after leading separators: `(+44) 20 7946 0958`;
/// - visual separators (`-`, `.`, `(`, `)`, space) are dropped (RFC 3966 §5.1.1);
/// - a leading `00` (the international prefix used in most of the world) becomes `+`;
/// - digits without `+` are read as an international number (the `+` was omitted).
pub fn normalize(input: &str) -> Result<E164, NumberError> {
    let mut s = input.trim();
    for scheme in ["tel:", "sip:", "sips:"] {
        if s.get(..scheme.len()).is_some_and(|p| p.eq_ignore_ascii_case(scheme)) {
            s = &s[scheme.len()..];
            break;
        }
    }
    if let Some(at) = s.find('@') {
        s = &s[..at];
    }
    let (number, params) = match s.find([';', '?']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let (plus, mut digits) = read_digits(number)?;
    if !plus {
        match global_phone_context(params) {
            Some(context) => digits.insert_str(0, &context),
            None => {
                if let Some(international) = digits.strip_prefix("00") {
                    digits = international.to_string();
                }
            }
        }
    }
    check_digits(&digits)?;
    Ok(E164(format!("+{digits}")))
}

/// Reads the digits of a number written with visual separators; says whether it had a leading
/// `+` (or `%2B`), which may only come before the first digit.
fn read_digits(s: &str) -> Result<(bool, String), NumberError> {
    let mut plus = false;
    let mut digits = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        let mut len = c.len_utf8();
        match c {
            '0'..='9' => digits.push(c),
            '-' | '.' | '(' | ')' | ' ' => {}
            '+' if !plus && digits.is_empty() => plus = true,
            '%' if !plus
                && digits.is_empty()
                && rest.get(1..3).is_some_and(|h| h.eq_ignore_ascii_case("2b")) =>
            {
                plus = true;
                len = 3;
            }
            other => return Err(NumberError::BadCharacter(other)),
        }
        rest = &rest[len..];
    }
    Ok((plus, digits))
}

/// The digits of a global `phone-context` parameter (`;phone-context=+1-415`), if `params` (the
/// text from the first `;` or `?` on) has one.
fn global_phone_context(params: &str) -> Option<String> {
    let value = params.split([';', '?', '&']).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim().eq_ignore_ascii_case("phone-context").then_some(value.trim())
    })?;
    // A domain name, or digits without `+`, is not a global context.
    match read_digits(value) {
        Ok((true, digits)) if !digits.is_empty() => Some(digits),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn n(s: &str) -> E164 {
        E164::parse_canonical(s).expect("a canonical number")
    }

    /// The schema's `^\+[1-9][0-9]{7,14}$`, written out by hand (no regex crate here).
    fn schema_accepts(s: &str) -> bool {
        let Some(digits) = s.strip_prefix('+') else { return false };
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    }

    #[test]
    fn percent_encoded_plus_is_a_plus() {
        assert_eq!(normalize("%2B14155550100"), Ok(n("+14155550100")));
        assert_eq!(normalize("sip:%2b14155550100@gw.example"), Ok(n("+14155550100")));
    }

    #[test]
    fn spaces_parentheses_and_dashes_are_visual_separators() {
        assert_eq!(normalize("+1 (415) 555-0100"), Ok(n("+14155550100")));
        assert_eq!(normalize("tel:+1-415-555-0100"), Ok(n("+14155550100")));
        assert_eq!(normalize("+1.415.555.0100"), Ok(n("+14155550100")));
    }

    #[test]
    fn plus_may_follow_an_opening_parenthesis() {
        assert_eq!(normalize("(+44) 20 7946 0958"), Ok(n("+442079460958")));
    }

    #[test]
    fn plus_after_a_digit_is_a_bad_character() {
        assert_eq!(normalize("1+4155550100"), Err(NumberError::BadCharacter('+')));
        assert_eq!(normalize("++14155550100"), Err(NumberError::BadCharacter('+')));
    }

    #[test]
    fn a_domain_phone_context_on_a_global_number_is_ignored() {
        assert_eq!(normalize("tel:+14155550100;phone-context=example.com"), Ok(n("+14155550100")));
    }

    #[test]
    fn a_global_phone_context_prefixes_a_local_number() {
        assert_eq!(normalize("tel:(415) 555-0100;phone-context=+1"), Ok(n("+14155550100")));
        assert_eq!(normalize("tel:555-0100;phone-context=+1-415"), Ok(n("+14155550100")));
        assert_eq!(
            normalize("sip:5550100;phone-context=+1415@gw.example;user=phone"),
            Ok(n("+14155550100"))
        );
    }

    #[test]
    fn a_domain_phone_context_leaves_a_local_number_read_as_international() {
        assert_eq!(normalize("tel:14155550100;phone-context=example.com"), Ok(n("+14155550100")));
    }

    #[test]
    fn sip_user_part_with_user_phone_and_host_is_the_number() {
        assert_eq!(normalize("sip:+14155550100;user=phone@gw.example"), Ok(n("+14155550100")));
        assert_eq!(normalize("sip:+14155550100@gw.example;user=phone"), Ok(n("+14155550100")));
        assert_eq!(normalize("SIPS:0014155550100@1.2.3.4:5061"), Ok(n("+14155550100")));
    }

    #[test]
    fn international_prefix_00_and_a_missing_plus_both_mean_international() {
        assert_eq!(normalize("0014155550100"), Ok(n("+14155550100")));
        assert_eq!(normalize("14155550100"), Ok(n("+14155550100")));
    }

    #[test]
    fn letters_are_a_bad_character() {
        assert_eq!(normalize("+1415CALLNOW"), Err(NumberError::BadCharacter('C')));
        assert_eq!(normalize("anonymous"), Err(NumberError::BadCharacter('a')));
    }

    #[test]
    fn seven_digits_are_too_short() {
        assert_eq!(normalize("+1415555"), Err(NumberError::Length(7)));
        assert_eq!(normalize("5550100"), Err(NumberError::Length(7)));
    }

    #[test]
    fn sixteen_digits_are_too_long_and_the_count_is_exact() {
        assert_eq!(normalize("+1415555010012345"), Err(NumberError::Length(16)));
        let long = format!("+{}", "1".repeat(100));
        assert_eq!(normalize(&long), Err(NumberError::Length(100)));
    }

    #[test]
    fn a_zero_after_the_plus_is_a_leading_zero() {
        assert_eq!(normalize("+04155550100"), Err(NumberError::LeadingZero));
        assert_eq!(normalize("000014155550100"), Err(NumberError::LeadingZero));
    }

    #[test]
    fn nothing_is_empty() {
        assert_eq!(normalize(""), Err(NumberError::Empty));
        assert_eq!(normalize("tel:+"), Err(NumberError::Empty));
        assert_eq!(normalize("sip:@gw.example"), Err(NumberError::Empty));
        assert_eq!(E164::parse_canonical(""), Err(NumberError::Empty));
    }

    #[test]
    fn parse_canonical_refuses_what_normalize_would_fix() {
        assert!(E164::parse_canonical("14155550100").is_err());
        assert!(E164::parse_canonical("+1 415 555 0100").is_err());
        assert!(E164::parse_canonical("tel:+14155550100").is_err());
    }

    #[test]
    fn caller_patterns_parse_and_print_back() {
        for s in ["*", "+1415*", "+14155550100"] {
            let p = CallerPattern::parse(s).expect("a pattern");
            assert_eq!(String::from(p), s);
        }
        for s in ["", "1415*", "+*", "+14a*", "+1415", "**"] {
            assert_eq!(CallerPattern::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn star_matches_every_caller() {
        let star = CallerPattern::parse("*").expect("a pattern");
        assert!(star.matches(&n("+14155550100")));
        assert!(star.matches(&n("+442079460958")));
    }

    /// A canonical E.164 number.
    fn e164() -> impl Strategy<Value = E164> {
        "\\+[1-9][0-9]{7,14}".prop_map(|s| n(&s))
    }

    /// Inserts a visual separator before some of the characters of `s`.
    fn with_separators(s: &str, seps: &[Option<char>]) -> String {
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if let Some(sep) = seps.get(i).copied().flatten() {
                out.push(sep);
            }
            out.push(c);
        }
        out
    }

    fn separators() -> impl Strategy<Value = Vec<Option<char>>> {
        proptest::collection::vec(
            proptest::option::weighted(0.3, prop::sample::select(vec!['-', '.', '(', ')', ' '])),
            0..20,
        )
    }

    proptest! {
        #[test]
        fn normalize_never_panics(s in any::<String>()) {
            let _ = normalize(&s);
        }

        #[test]
        fn normalize_never_panics_on_long_number_like_strings(
            s in "[0-9+%2Bb;=@:().\\- a-z]{0,400}"
        ) {
            let _ = normalize(&s);
        }

        #[test]
        fn normalize_is_idempotent(s in "(tel:|sip:)?[+]?[0-9 ().-]{0,20}(;phone-context=[+]?[0-9a-z.]{0,6})?(@[a-z.]{1,10})?") {
            if let Ok(once) = normalize(&s) {
                prop_assert_eq!(normalize(once.as_str()), Ok(once.clone()));
            }
        }

        #[test]
        fn normalize_is_idempotent_on_anything(s in any::<String>()) {
            if let Ok(once) = normalize(&s) {
                prop_assert_eq!(normalize(once.as_str()), Ok(once.clone()));
            }
        }

        #[test]
        fn a_number_written_any_common_way_normalises_back(
            number in e164(),
            seps in separators(),
            host in "[a-z]{1,10}\\.example",
        ) {
            let plain = number.as_str();
            let digits = number.digits();
            let written = [
                plain.to_string(),
                with_separators(plain, &seps),
                format!("tel:{}", with_separators(plain, &seps)),
                format!("sip:{plain};user=phone@{host}"),
                format!("sip:{plain}@{host};user=phone"),
                format!("sips:{}@{host}", with_separators(plain, &seps)),
                format!("00{digits}"),
                with_separators(&format!("00{digits}"), &seps),
                digits.to_string(),
                with_separators(digits, &seps),
                format!("%2B{digits}"),
            ];
            for w in written {
                prop_assert_eq!(normalize(&w), Ok(number.clone()), "written as {:?}", w);
            }
        }

        #[test]
        fn parse_canonical_accepts_every_schema_match(s in "\\+[1-9][0-9]{7,14}") {
            prop_assert!(schema_accepts(&s));
            let parsed = E164::parse_canonical(&s);
            prop_assert_eq!(parsed.as_ref().map(E164::as_str), Ok(s.as_str()));
        }

        #[test]
        fn parse_canonical_accepts_exactly_what_the_schema_accepts(
            s in "[+]?[0-9]{0,17}|[+0-9a ]{0,18}|\\+[1-9][0-9]{6,15}[ a]?|.{0,5}"
        ) {
            prop_assert_eq!(E164::parse_canonical(&s).is_ok(), schema_accepts(&s), "{:?}", s);
        }

        #[test]
        fn a_prefix_pattern_matches_exactly_the_numbers_starting_with_it(
            prefix in "[0-9]{1,6}",
            rest in "[0-9]{7,9}",
            other in e164(),
        ) {
            let pattern = CallerPattern::parse(&format!("+{prefix}*"));
            prop_assert_eq!(&pattern, &Some(CallerPattern::Prefix(prefix.clone())));
            let pattern = pattern.expect("checked above");
            prop_assert_eq!(pattern.matches(&other), other.digits().starts_with(&prefix));
            if let Ok(starting) = E164::parse_canonical(&format!("+{prefix}{rest}")) {
                prop_assert!(pattern.matches(&starting));
            }
        }
    }
}
