//! The header contract of the agent leg (`call::headers::apply`): the caller side's `X-*`
//! headers, with the first-class ones (JSON custom data, languages, instruction ids). Never
//! panics; stays within its limits however many or large the headers are.
//!
//! Input: header lines `NAME: VALUE` separated by `\n` (so seeds are readable), the prefix
//! being `X-Trunkline-`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trunkline::call::headers::{Limits, apply};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let incoming: Vec<(String, String)> = text
        .split('\n')
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let limits = Limits { headers: 8, value_bytes: 256, entries: 8 };
    let contract = apply("X-Trunkline-", &incoming, limits);
    assert!(contract.headers.len() <= incoming.len());
    assert_eq!(contract.headers.len(), contract.stored.len());
    assert!(contract.languages.len() <= limits.entries);
    assert!(contract.instruction_ids.len() <= limits.entries);
    for data in [&contract.contact_custom_data, &contract.session_custom_data].into_iter().flatten()
    {
        assert!(data.len() <= limits.entries);
    }
    let _ = format!("{contract:?}");
});
