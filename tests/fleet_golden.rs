//! Golden tests of the gateway fleet: every `tests/golden/fleet/<case>.in.yaml` holds operator
//! settings, and the objects `render_fleet` makes of them (multi-document YAML, as `kubectl
//! apply -f` reads it) must equal `<case>.out.yaml`; settings that are refused give the error
//! instead. `UPDATE_GOLDEN=1 cargo test --test fleet_golden` rewrites the outputs; review the
//! diff before committing. The crate version in the default image is written `<version>`, so a
//! release does not rewrite the files.

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

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden/fleet exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    cases.sort();
    cases
}

fn case_name(input: &Path) -> String {
    let file = input.file_name().and_then(|f| f.to_str()).expect("UTF-8 file name");
    file.trim_end_matches(".in.yaml").to_string()
}

#[test]
fn every_fleet_case_renders_to_its_recorded_objects() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let cases = cases();
    assert!(cases.len() >= 3, "expected at least 3 fleet cases, found {}", cases.len());

    let mut mismatched = Vec::new();
    for input in &cases {
        let case = case_name(input);
        let text = std::fs::read_to_string(input).expect("readable case");
        let actual = render(&case, &text);
        let out_path = golden_dir().join(format!("{case}.out.yaml"));
        if update {
            std::fs::write(&out_path, &actual).expect("write golden output");
            continue;
        }
        let expected = std::fs::read_to_string(&out_path).unwrap_or_default();
        if expected != actual {
            mismatched
                .push(format!("--- {case}: expected\n{expected}\n--- {case}: actual\n{actual}"));
        }
    }
    assert!(
        mismatched.is_empty(),
        "{} fleet case(s) differ (UPDATE_GOLDEN=1 rewrites them):\n{}",
        mismatched.len(),
        mismatched.join("\n")
    );
}

#[test]
fn every_fleet_output_has_an_input() {
    for entry in std::fs::read_dir(golden_dir()).expect("tests/golden/fleet exists") {
        let path = entry.expect("dir entry").path();
        let name = path.to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".out.yaml") {
            assert!(Path::new(&format!("{stem}.in.yaml")).exists(), "{name} has no input");
        }
    }
}

#[test]
fn the_named_cases_exist_and_render_objects() {
    for case in ["defaults", "daemonset-hostnetwork", "loadbalancer-source-ranges-tls"] {
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
    for input in cases() {
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
