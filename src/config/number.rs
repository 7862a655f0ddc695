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

/// Normalises a dialed or calling number as carriers send it, without knowing the trunk's
/// national format (the first of [`readings`] with no [`NumberFormat`]):
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
    readings(input, None).map(|mut all| all.swap_remove(0).0)
}

/// How an InboundTrunk's carrier writes numbers that have no `+` (its `numberFormat`): the
/// country it is in, the prefix of national numbers there, and the prefix of international ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NumberFormat {
    /// The country code of national numbers, digits only: `1`, `44`.
    pub country_code: String,
    /// The trunk (national) prefix dialed before a national number, if the country has one:
    /// `0` in most of Europe, `1` in North America.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub national_prefix: Option<String>,
    /// The prefix of an international number: `011` in North America, `00` elsewhere.
    pub international_prefix: String,
}

impl NumberFormat {
    /// The international prefix of a country when the trunk names none: `011` in the North
    /// American Numbering Plan (country code 1), `00` elsewhere (ITU-T E.164 recommends it and
    /// nearly every other country uses it).
    pub fn default_international_prefix(country_code: &str) -> &'static str {
        if country_code == "1" { "011" } else { "00" }
    }

    /// `digits` without the national prefix, when they start with it.
    fn national<'a>(&self, digits: &'a str) -> Option<&'a str> {
        digits.strip_prefix(self.national_prefix.as_deref()?)
    }
}

/// How a number without its `+` was read, for `explain` and the session record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// It was written with its `+`.
    Global,
    /// A local number: the global `phone-context` gave the digits in front.
    PhoneContext,
    /// It started with this international prefix (`00`, `011`).
    InternationalPrefix(String),
    /// A national number of the trunk's `numberFormat` country (its national prefix dropped,
    /// when it had one).
    National { country_code: String, national_prefix: Option<String> },
    /// Digits read as an international number whose `+` was left out.
    PlusOmitted,
}

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reading::Global => f.write_str("written in E.164"),
            Reading::PhoneContext => f.write_str("a local number in its phone-context"),
            Reading::InternationalPrefix(prefix) => {
                write!(f, "after the international prefix {prefix}")
            }
            Reading::National { country_code, national_prefix: Some(prefix) } => {
                write!(f, "a national number of +{country_code} after the national prefix {prefix}")
            }
            Reading::National { country_code, national_prefix: None } => {
                write!(f, "a national number of +{country_code}")
            }
            Reading::PlusOmitted => f.write_str("an international number without its +"),
        }
    }
}

/// Every way `input` reads as an E.164 number, in order of preference, with how each was read.
/// Never empty on success. What [`normalize`] does, and with a trunk's `format`:
/// - a `+` or a global `phone-context` leaves one reading, as in [`normalize`]; a local number
///   in the context of the format's own country drops its national prefix first
///   (`tel:02071230003;phone-context=+44`);
/// - digits starting with the format's international prefix (`011` in North America) are one
///   international number (without a format: `00`);
/// - digits starting with the format's national prefix (`0` in the UK) are one national number:
///   `02071230003` on `+44` is `+442071230003`;
/// - other digits are a national number first (`4155550142` on `+1` is `+14155550142`), and
///   an international number without its `+` second (`442071230003` on `+44` may be
///   `+44442071230003` or `+442071230003`: the matcher takes the first one the trunk holds).
///
/// Readings that are not valid E.164 (too long, a leading zero) are left out; when none is
/// valid, the error is the first one's.
pub fn readings(
    input: &str,
    format: Option<&NumberFormat>,
) -> Result<Vec<(E164, Reading)>, NumberError> {
    let (number, params) = number_and_params(input);
    let (plus, digits) = read_digits(number)?;
    if digits.is_empty() {
        return Err(NumberError::Empty);
    }
    let one = |digits: String, reading: Reading| {
        check_digits(&digits)?;
        Ok(vec![(E164(format!("+{digits}")), reading)])
    };
    if plus {
        return one(digits, Reading::Global);
    }
    if let Some(mut context) = global_phone_context(params) {
        let local = format
            .filter(|f| f.country_code == context)
            .and_then(|f| f.national(&digits))
            .unwrap_or(&digits);
        context.push_str(local);
        return one(context, Reading::PhoneContext);
    }
    let international = format.map_or("00", |f| f.international_prefix.as_str());
    if let Some(rest) = digits.strip_prefix(international) {
        return one(rest.to_string(), Reading::InternationalPrefix(international.to_string()));
    }
    let Some(format) = format else {
        return one(digits, Reading::PlusOmitted);
    };
    let national = |prefix: Option<&String>| Reading::National {
        country_code: format.country_code.clone(),
        national_prefix: prefix.cloned(),
    };
    if let Some(number) = format.national(&digits) {
        let reading = national(format.national_prefix.as_ref());
        return one(format!("{}{number}", format.country_code), reading);
    }
    let mut valid = Vec::with_capacity(2);
    let mut first_error = None;
    let candidates = [
        (format!("{}{digits}", format.country_code), national(None)),
        (digits.clone(), Reading::PlusOmitted),
    ];
    for (candidate, reading) in candidates {
        match check_digits(&candidate) {
            Ok(()) => valid.push((E164(format!("+{candidate}")), reading)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if valid.is_empty() => Err(e),
        _ => Ok(valid),
    }
}

/// The number of a `tel:`/`sip:` URI or bare string, and its parameters (the text from the
/// first `;` or `?` on).
fn number_and_params(input: &str) -> (&str, &str) {
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
    match s.find([';', '?']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
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

    fn format(country_code: &str, national_prefix: Option<&str>) -> NumberFormat {
        NumberFormat {
            country_code: country_code.to_string(),
            national_prefix: national_prefix.map(str::to_string),
            international_prefix: NumberFormat::default_international_prefix(country_code)
                .to_string(),
        }
    }

    fn first(input: &str, format: &NumberFormat) -> Result<E164, NumberError> {
        readings(input, Some(format)).map(|all| all[0].0.clone())
    }

    fn all(input: &str, format: &NumberFormat) -> Vec<String> {
        readings(input, Some(format))
            .expect("readings")
            .into_iter()
            .map(|(n, _)| n.as_str().to_string())
            .collect()
    }

    #[test]
    fn a_us_national_number_reads_as_plus_one_first_then_as_international() {
        let us = format("1", Some("1"));
        assert_eq!(all("4155550142", &us), ["+14155550142", "+4155550142"]);
        // The NANP trunk prefix 1: the same number, once.
        assert_eq!(all("14155550142", &us), ["+14155550142"]);
        assert_eq!(all("sip:(415) 555-0142@carrier.example;user=phone", &us)[0], "+14155550142");
    }

    #[test]
    fn a_uk_national_number_drops_its_national_prefix() {
        let uk = format("44", Some("0"));
        assert_eq!(all("02071230003", &uk), ["+442071230003"]);
        let Ok(found) = readings("02071230003", Some(&uk)) else { panic!() };
        assert_eq!(found[0].1.to_string(), "a national number of +44 after the national prefix 0");
        // Without the format the same digits are no number at all.
        assert_eq!(normalize("02071230003"), Err(NumberError::LeadingZero));
    }

    #[test]
    fn the_international_prefix_is_the_formats_011_in_north_america_00_elsewhere() {
        let us = format("1", Some("1"));
        assert_eq!(all("011442071230003", &us), ["+442071230003"]);
        let uk = format("44", Some("0"));
        // 00 is international before 0 is national.
        assert_eq!(all("0014155550142", &uk), ["+14155550142"]);
        // 011 means nothing special outside North America: 0 then a national number.
        assert_eq!(all("01144556677", &uk), ["+441144556677"]);
    }

    #[test]
    fn digits_without_a_prefix_on_a_uk_trunk_may_be_either_reading() {
        let uk = format("44", Some("0"));
        assert_eq!(all("442071230003", &uk), ["+44442071230003", "+442071230003"]);
        // Too long once the country code is in front: only the international reading is left.
        assert_eq!(all("442071230003123", &uk), ["+442071230003123"]);
    }

    #[test]
    fn a_plus_or_a_phone_context_leaves_one_reading_whatever_the_format() {
        let us = format("1", Some("1"));
        assert_eq!(all("+442071230003", &us), ["+442071230003"]);
        assert_eq!(all("tel:5550142;phone-context=+1-415", &us), ["+14155550142"]);
        let uk = format("44", Some("0"));
        // A local number in the format's own country keeps no national prefix.
        assert_eq!(all("tel:02071230003;phone-context=+44", &uk), ["+442071230003"]);
        // In another country's context it is left as written.
        assert_eq!(all("tel:2071230003;phone-context=+33", &uk), ["+332071230003"]);
    }

    #[test]
    fn a_format_without_a_national_prefix_still_reads_national_numbers() {
        let it = NumberFormat {
            country_code: "39".into(),
            national_prefix: None,
            international_prefix: "00".into(),
        };
        // Italy keeps its 0 inside the national number.
        assert_eq!(first("0612345678", &it), Ok(n("+390612345678")));
    }

    #[test]
    fn bad_input_is_the_same_error_with_or_without_a_format() {
        let us = format("1", Some("1"));
        assert_eq!(first("anonymous", &us), Err(NumberError::BadCharacter('a')));
        assert_eq!(first("", &us), Err(NumberError::Empty));
        assert_eq!(first("555", &us), Err(NumberError::Length(4)));
        assert_eq!(first("0110123456789", &us), Err(NumberError::LeadingZero));
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

        #[test]
        fn readings_never_panic_and_are_canonical(
            s in "(tel:|sip:)?[+]?[0-9 ().-]{0,24}(;phone-context=[+]?[0-9a-z.]{0,6})?",
            cc in "[1-9][0-9]{0,2}",
            np in proptest::option::of("[0-9]{1,2}"),
            ip in "[0-9]{2,3}",
        ) {
            let f = NumberFormat { country_code: cc, national_prefix: np, international_prefix: ip };
            if let Ok(found) = readings(&s, Some(&f)) {
                prop_assert!(!found.is_empty());
                for (number, _) in found {
                    prop_assert!(E164::is_canonical(number.as_str()), "{number}");
                }
            }
        }

        #[test]
        fn a_number_in_any_national_or_international_form_reads_back(
            number in e164(),
            cc_len in 1usize..=3,
            np in proptest::option::of(prop::sample::select(vec!["0", "1", "8"])),
            ip in prop::sample::select(vec!["00", "011", "810"]),
        ) {
            let digits = number.digits();
            let (cc, national) = digits.split_at(cc_len.min(digits.len() - 1));
            let f = NumberFormat {
                country_code: cc.to_string(),
                national_prefix: np.map(str::to_string),
                international_prefix: ip.to_string(),
            };
            // Written with its +, after the international prefix, or in its phone-context.
            prop_assert_eq!(first(number.as_str(), &f), Ok(number.clone()));
            prop_assert_eq!(first(&format!("{ip}{digits}"), &f), Ok(number.clone()));
            // (A local number in its own country's context drops a national prefix: one that
            // starts with it is not tried.)
            if np.is_none_or(|np| !national.starts_with(np)) {
                prop_assert_eq!(
                    first(&format!("tel:{national};phone-context=+{cc}"), &f),
                    Ok(number.clone())
                );
            }
            // A national number with the national prefix, when that cannot be mistaken for the
            // international prefix.
            if let Some(np) = np.filter(|np| !format!("{np}{national}").starts_with(ip)) {
                prop_assert_eq!(first(&format!("{np}{national}"), &f), Ok(number.clone()));
            }
            // Bare national digits, when they start with neither prefix: the first reading.
            let bare = !national.starts_with(ip)
                && np.is_none_or(|np| !national.starts_with(np));
            if bare {
                prop_assert_eq!(first(national, &f), Ok(number.clone()));
            }
            // The digits of the whole number: one of the readings, unless a prefix claims them.
            let claimed = digits.starts_with(ip) || np.is_some_and(|np| digits.starts_with(np));
            if !claimed {
                let found = readings(digits, Some(&f)).expect("readings");
                prop_assert!(found.iter().any(|(n, _)| *n == number));
            }
        }
    }
}
