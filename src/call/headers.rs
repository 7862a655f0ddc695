//! The header contract of the agent leg (DESIGN §5, issue 14): what of the caller side's `X-*`
//! headers the agent runtime gets, and in which form. Pure: the front door's call set-up and
//! `explain -H` both call [`apply`], so the two never disagree.
//!
//! - **Gateway-asserted** headers (`{prefix}Agent-ID`, `Trunk`, `Number`, `Session-ID`,
//!   `Direction`, `Caller`) come from the gateway only: a copy the caller side sent is removed
//!   (it is a forgery or a loop, not information), before the gateway adds its own.
//! - **First-class** headers are validated and passed on normalised:
//!   `Contact-Custom-Data` and `Session-Custom-Data` must be a JSON object of strings, numbers
//!   and booleans (other values are dropped field by field with a warning; invalid JSON or not
//!   an object drops the header with a warning; passed on as compact JSON with sorted keys);
//!   `Agent-Language` is one BCP 47 tag or a comma-separated list (case normalised by RFC 5646,
//!   duplicates removed, invalid entries dropped with a warning); `Include-Instruction-IDs` is a
//!   comma-separated list of ids (trimmed, empty ones dropped, duplicates removed);
//!   `Contact-ID` is trimmed.
//! - **Other `X-*`** headers pass unchanged.
//! - **Limits**: a value longer than [`Limits::value_bytes`] or past [`Limits::headers`] `X-*`
//!   headers is dropped with a warning; the call is never refused for a header.
//!
//! Every header passed on is also kept for the session record with its leading `X-` removed.

use serde::Serialize;
use serde_json::{Map, Value};

/// The gateway's own session headers (after the prefix).
pub const ASSERTED: [&str; 6] =
    ["Agent-ID", "Trunk", "Number", "Session-ID", "Direction", "Caller"];

/// Bounds on what the caller side may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `X-*` headers passed on at most (gateway-asserted copies are not counted).
    pub headers: usize,
    /// Bytes of one header's value at most.
    pub value_bytes: usize,
    /// Entries of a list header (languages, instruction ids) and fields of custom data.
    pub entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // Generous for real use (a CRM's custom data is a few hundred bytes), small enough that
        // a hostile INVITE cannot make every agent request and record large.
        Limits { headers: 32, value_bytes: 4096, entries: 64 }
    }
}

/// Something dropped or changed, for the session record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderWarning {
    pub header: String,
    pub message: String,
}

/// What the agent runtime gets and the record keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Contract {
    /// The caller side's `X-*` headers to pass on, normalised, in their order.
    pub headers: Vec<(String, String)>,
    /// The same, each name without its leading `X-` (the session record's `headers`).
    pub stored: Vec<(String, String)>,
    pub contact_id: Option<String>,
    pub contact_custom_data: Option<Map<String, Value>>,
    pub session_custom_data: Option<Map<String, Value>>,
    pub languages: Vec<String>,
    pub instruction_ids: Vec<String>,
    pub warnings: Vec<HeaderWarning>,
    /// Gateway-asserted headers the caller side sent, removed (names only).
    pub removed: Vec<String>,
}

/// Applies the contract to the caller side's headers (all of them; only `X-*` ones are read).
pub fn apply(prefix: &str, incoming: &[(String, String)], limits: Limits) -> Contract {
    let mut c = Contract::default();
    let lower_prefix = prefix.to_ascii_lowercase();
    for (name, value) in incoming {
        let lower = name.to_ascii_lowercase();
        if !lower.starts_with("x-") {
            continue;
        }
        let own = lower.strip_prefix(&lower_prefix);
        if own.is_some_and(|o| ASSERTED.iter().any(|a| a.eq_ignore_ascii_case(o))) {
            c.removed.push(name.clone());
            continue;
        }
        let mut warn = |message: String| {
            c.warnings.push(HeaderWarning { header: name.clone(), message });
        };
        if value.len() > limits.value_bytes {
            warn(format!("dropped: {} bytes, more than {}", value.len(), limits.value_bytes));
            continue;
        }
        if c.headers.len() >= limits.headers {
            warn(format!("dropped: more than {} X- headers", limits.headers));
            continue;
        }
        let value = value.trim();
        let normalised = match own.map(|o| o.to_ascii_lowercase()).as_deref() {
            Some("contact-custom-data") | Some("session-custom-data") => {
                match custom_data(value, limits.entries, &mut warn) {
                    Some(map) => {
                        let text = Value::Object(map.clone()).to_string();
                        if lower.ends_with("contact-custom-data") {
                            c.contact_custom_data = Some(map);
                        } else {
                            c.session_custom_data = Some(map);
                        }
                        text
                    }
                    None => continue,
                }
            }
            Some("agent-language") => {
                let tags = languages(value, limits.entries, &mut warn);
                if tags.is_empty() {
                    warn("dropped: no valid language".into());
                    continue;
                }
                let text = tags.join(",");
                c.languages = tags;
                text
            }
            Some("include-instruction-ids") => {
                let ids = list(value, limits.entries, &mut warn);
                if ids.is_empty() {
                    continue;
                }
                let text = ids.join(",");
                c.instruction_ids = ids;
                text
            }
            Some("contact-id") => {
                if value.is_empty() {
                    continue;
                }
                c.contact_id = Some(value.to_string());
                value.to_string()
            }
            _ => value.to_string(),
        };
        if normalised.len() > limits.value_bytes {
            // Normalising can lengthen a value (`1e2` is written `100.0`).
            warn(format!(
                "dropped: {} bytes once normalised, more than {}",
                normalised.len(),
                limits.value_bytes
            ));
            continue;
        }
        let stored = name.get(2..).unwrap_or_default().to_string();
        c.stored.push((stored, normalised.clone()));
        c.headers.push((name.clone(), normalised));
    }
    c
}

/// A JSON object of strings, numbers and booleans; other fields dropped with a warning each.
fn custom_data(
    value: &str,
    max_fields: usize,
    warn: &mut impl FnMut(String),
) -> Option<Map<String, Value>> {
    let parsed: Value = match serde_json::from_str(value) {
        Ok(v) => v,
        Err(e) => {
            warn(format!("dropped: not JSON ({e})"));
            return None;
        }
    };
    let Value::Object(object) = parsed else {
        warn("dropped: not a JSON object".into());
        return None;
    };
    let mut kept = Map::new();
    let mut dropped = Vec::new();
    for (key, v) in object {
        match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) if kept.len() < max_fields => {
                kept.insert(key, v);
            }
            Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                dropped.push(format!("{key:?} (more than {max_fields} fields)"))
            }
            Value::Null => dropped.push(format!("{key:?} (null)")),
            Value::Array(_) => dropped.push(format!("{key:?} (an array)")),
            Value::Object(_) => dropped.push(format!("{key:?} (an object)")),
        }
    }
    if !dropped.is_empty() {
        warn(format!(
            "fields dropped (only strings, numbers and booleans pass): {}",
            dropped.join(", ")
        ));
    }
    Some(kept)
}

/// Comma-separated BCP 47 tags, normalised, deduplicated; invalid ones dropped with a warning.
fn languages(value: &str, max: usize, warn: &mut impl FnMut(String)) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    let mut invalid = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match oxilangtag::LanguageTag::parse_and_normalize(entry) {
            Ok(tag) if tags.len() < max => {
                let tag = tag.into_inner();
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            }
            Ok(_) => invalid.push(format!("{entry:?} (more than {max})")),
            Err(_) => invalid.push(format!("{entry:?}")),
        }
    }
    if !invalid.is_empty() {
        warn(format!("not language tags, dropped: {}", invalid.join(", ")));
    }
    tags
}

/// Comma-separated ids: trimmed, empty ones dropped, duplicates removed.
fn list(value: &str, max: usize, warn: &mut impl FnMut(String)) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for id in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if ids.len() >= max {
            warn(format!("entries after the first {max} dropped"));
            break;
        }
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_string());
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: &str = "X-Trunkline-";

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn header<'a>(c: &'a Contract, name: &str) -> Option<&'a str> {
        c.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_issues_example_is_normalised_with_two_warnings() {
        let c = apply(
            P,
            &h(&[
                (
                    "X-Trunkline-Contact-Custom-Data",
                    r#"{"name":"Ada","visits":3,"vip":true,"address":{"city":"x"},"note":null}"#,
                ),
                ("X-Trunkline-Agent-Language", "EN-us, xx-123456789, fr"),
                ("X-Trunkline-Include-Instruction-IDs", " a1, ,b2 ,, a1"),
                ("X-Trunkline-Trunk", "forged"),
                ("X-Foo", "foo-value-1"),
                ("Subject", "not an X- header"),
            ]),
            Limits::default(),
        );
        assert_eq!(
            header(&c, "X-Trunkline-Contact-Custom-Data"),
            Some(r#"{"name":"Ada","vip":true,"visits":3}"#)
        );
        assert_eq!(header(&c, "X-Trunkline-Agent-Language"), Some("en-US,fr"));
        assert_eq!(header(&c, "X-Trunkline-Include-Instruction-IDs"), Some("a1,b2"));
        assert_eq!(header(&c, "X-Trunkline-Trunk"), None, "the forgery is removed");
        assert_eq!(c.removed, vec!["X-Trunkline-Trunk".to_string()]);
        assert_eq!(header(&c, "X-Foo"), Some("foo-value-1"));
        assert_eq!(header(&c, "Subject"), None);
        assert_eq!(c.warnings.len(), 2, "{:#?}", c.warnings);
        assert!(c.warnings[0].message.contains("\"address\" (an object)"));
        assert!(c.warnings[0].message.contains("\"note\" (null)"));
        assert!(c.warnings[1].message.contains("xx-123456789"));
        let custom = c.contact_custom_data.unwrap();
        assert_eq!(custom["visits"], 3);
        assert_eq!(custom["vip"], true);
        assert_eq!(c.languages, ["en-US", "fr"]);
        assert_eq!(c.instruction_ids, ["a1", "b2"]);
        assert!(c.stored.contains(&("Foo".to_string(), "foo-value-1".to_string())));
        assert!(c.stored.iter().any(|(n, _)| n == "Trunkline-Agent-Language"));
    }

    #[test]
    fn bad_custom_data_is_dropped_with_a_warning_and_the_rest_goes_on() {
        for bad in ["{not json", "[1,2]", "\"text\"", "42"] {
            let c = apply(
                P,
                &h(&[("X-Trunkline-Session-Custom-Data", bad), ("X-A", "b")]),
                Limits::default(),
            );
            assert_eq!(header(&c, "X-Trunkline-Session-Custom-Data"), None, "{bad}");
            assert_eq!(c.warnings.len(), 1, "{bad}");
            assert_eq!(header(&c, "X-A"), Some("b"));
        }
    }

    #[test]
    fn every_gateway_asserted_header_is_removed_whatever_its_case() {
        for own in ASSERTED {
            let c = apply(
                P,
                &h(&[(&format!("x-trunkline-{}", own.to_lowercase()), "forged")]),
                Limits::default(),
            );
            assert!(c.headers.is_empty() && c.warnings.is_empty(), "{own}");
        }
    }

    #[test]
    fn limits_drop_headers_with_a_warning_not_the_call() {
        let limits = Limits { headers: 2, value_bytes: 10, entries: 2 };
        let c = apply(
            P,
            &h(&[
                ("X-A", "1"),
                ("X-Long", "01234567890"),
                ("X-B", "2"),
                ("X-C", "3"),
                ("X-Trunkline-Agent-Language", "en,fr,de"),
            ]),
            limits,
        );
        let names: Vec<&str> = c.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["X-A", "X-B"]);
        assert_eq!(c.warnings.len(), 3, "{:#?}", c.warnings);
    }

    proptest! {
        /// Whatever comes in: no panic; nothing asserted by the gateway passes; every value
        /// passed fits the limits; custom data passed is an object of scalars; languages are
        /// valid, normalised and unique; applying the contract to its own output changes
        /// nothing and warns of nothing.
        #[test]
        fn the_contract_holds_for_any_input(
            entries in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("X-Trunkline-Contact-Custom-Data".to_string()),
                        Just("X-Trunkline-Session-Custom-Data".to_string()),
                        Just("X-Trunkline-Agent-Language".to_string()),
                        Just("X-Trunkline-Include-Instruction-IDs".to_string()),
                        Just("X-Trunkline-Contact-ID".to_string()),
                        Just("X-Trunkline-Trunk".to_string()),
                        Just("x-trunkline-agent-id".to_string()),
                        "X-[A-Za-z-]{1,12}",
                        "[A-Za-z-]{1,12}",
                    ],
                    prop_oneof![
                        ".{0,40}",
                        r#"\{("[a-z]{1,4}":(1|true|"s"|null|\[\]|\{\}),?){0,5}\}"#,
                        "([A-Za-z]{1,9}(-[A-Za-z0-9]{1,9}){0,2}, ?){0,4}",
                        "[A-Za-z0-9 ,]{0,30}",
                    ],
                ),
                0..12,
            )
        ) {
            let limits = Limits { headers: 8, value_bytes: 64, entries: 5 };
            let c = apply(P, &entries, limits);
            prop_assert!(c.headers.len() <= limits.headers);
            for (name, value) in &c.headers {
                prop_assert!(name.to_ascii_lowercase().starts_with("x-"));
                let own = name.to_ascii_lowercase();
                let forged = ASSERTED
                    .iter()
                    .any(|a| own == format!("x-trunkline-{}", a.to_ascii_lowercase()));
                prop_assert!(!forged);
                prop_assert!(value.len() <= limits.value_bytes);
            }
            for map in [&c.contact_custom_data, &c.session_custom_data].into_iter().flatten() {
                prop_assert!(map.values().all(|v| v.is_string() || v.is_number() || v.is_boolean()));
            }
            for (i, tag) in c.languages.iter().enumerate() {
                let normal = oxilangtag::LanguageTag::parse_and_normalize(tag)
                    .map(|t| t.into_inner())
                    .ok();
                prop_assert_eq!(normal.as_deref(), Some(tag.as_str()));
                prop_assert!(!c.languages[..i].contains(tag));
            }
            let again = apply(P, &c.headers, limits);
            prop_assert_eq!(&again.headers, &c.headers);
            prop_assert!(again.warnings.is_empty(), "{:?}", again.warnings);
        }
    }
}
