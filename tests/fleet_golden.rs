//! Golden tests of the gateway fleet: every `tests/golden/fleet/<case>.in.yaml` holds operator
//! settings, and the objects `render_fleet` makes of them (multi-document YAML, as `kubectl
//! apply -f` reads it) must equal `<case>.out.yaml`; settings that are refused give the error
//! instead. `UPDATE_GOLDEN=1 cargo test --test fleet_golden` rewrites the outputs; review the
//! diff before committing. The crate version in the default image is written `<version>`, so a
//! release does not rewrite the files.

#[path = "support/golden.rs"]
mod golden;

use std::path::{Path, PathBuf};

use trunkline::config::yaml;
use trunkline::operator::fleet::{FleetObject, render_fleet};
use trunkline::operator::settings::OperatorSettings;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fleet")
}

fn render(case: &str, text: &str) -> String {
    let mut out = format!(
        "# render_fleet of {case}.in.yaml (UPDATE_GOLDEN=1 cargo test --test fleet_golden)\n"
    );
    // A relative name keeps the outputs free of the machine's paths.
    match OperatorSettings::parse(text, Path::new(&format!("{case}.in.yaml"))) {
        Ok(settings) => {
            for object in render_fleet(&settings) {
                out.push_str("---\n");
                out.push_str(&yaml::to_yaml(&object).expect("a fleet object serialises"));
            }
        }
        Err(error) => {
            out.push_str("# refused:\n");
            out.push_str(&yaml::to_yaml(&error.to_string()).expect("a string serialises"));
        }
    }
    out.replace(concat!(":", env!("CARGO_PKG_VERSION")), ":<version>")
}

#[test]
fn every_fleet_case_renders_to_its_recorded_objects() {
    golden::check(&golden_dir(), 3, render);
}

#[test]
fn every_fleet_output_has_an_input() {
    golden::every_output_has_an_input(&golden_dir());
}

#[test]
fn the_named_cases_exist_and_render_objects() {
    for case in [
        "defaults",
        "daemonset-hostnetwork",
        "loadbalancer-source-ranges-tls",
        "pod-addresses",
        "fixed-single-gateway-host-ports",
        "owned-json-logs-one-namespace",
        "api-enabled-generated-token",
        "tls-ca-named-api-token-pod-network",
        "agent-credentials",
        "records-webhook-empty-dir",
        "records-https-ca-shared-claim",
        "security-limits",
    ] {
        let input = golden_dir().join(format!("{case}.in.yaml"));
        let text = std::fs::read_to_string(&input).expect("the case exists");
        let settings = OperatorSettings::parse(&text, &input).expect("the case's settings load");
        assert!(!render_fleet(&settings).is_empty(), "{case}");
    }
}

#[test]
fn every_output_document_reads_back_as_the_object_rendered() {
    // The golden text is what `kubectl apply -f` would take: each document parses back into
    // the same JSON as the object it came from.
    for input in golden::cases(&golden_dir()) {
        let text = std::fs::read_to_string(&input).expect("readable case");
        let Ok(settings) = OperatorSettings::parse(&text, &input) else { continue };
        let objects: Vec<FleetObject> = render_fleet(&settings);
        let rendered: String = objects
            .iter()
            .map(|o| format!("---\n{}", yaml::to_yaml(o).expect("serialises")))
            .collect();
        let documents = yaml::documents(&rendered);
        assert_eq!(documents.len(), objects.len(), "{}", input.display());
        for (document, object) in documents.iter().zip(&objects) {
            let value = document.value.as_ref().expect("each document parses");
            assert_eq!(value, &serde_json::to_value(object).expect("serialises"));
            assert!(value.get("apiVersion").is_some() && value.get("kind").is_some());
        }
    }
}
