//! Session records written by a gateway under test (`--records-file`): read back, each checked
//! against the committed JSON Schema (`docs/schemas/session-record-v1.json`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The records in `file` once there are at least `count` of them (bounded wait: a record is
/// written when its call ends, after the relay stops), each valid against the schema.
pub fn wait_records(file: &Path, count: usize, within: Duration) -> Vec<Value> {
    let schema_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schemas/session-record-v1.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).expect("the schema"))
            .expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON record"))
            .collect();
        if records.len() >= count || Instant::now() >= deadline {
            for r in &records {
                let errors: Vec<String> = validator.iter_errors(r).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "a record breaks the schema: {errors:?}\n{r:#}");
            }
            assert!(records.len() >= count, "{} records, not {count}: {text}", records.len());
            return records;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
