//! Golden tests of compile: every `tests/golden/<case>.in.yaml` is loaded and compiled, and the
//! routing table together with every object's verdict (and the loader's file-level problems) must
//! equal `<case>.out.yaml`. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the outputs;
//! review the diff before committing. A first line `# region: NAME` compiles for that region.

#[path = "support/golden.rs"]
mod golden;

use std::path::{Path, PathBuf};

use serde::Serialize;
use trunkline::config::manifest::{LoadProblem, Loaded, load_str};
use trunkline::config::{CompileOptions, RoutingTable, Verdict, compile, yaml};

#[derive(Serialize)]
struct Golden<'a> {
    table: &'a RoutingTable,
    verdicts: Vec<Verdict>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    problems: &'a [LoadProblem],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    notices: &'a [String],
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn render(case: &str, text: &str) -> String {
    let region =
        text.lines().next().and_then(|l| l.strip_prefix("# region:")).map(|r| r.trim().to_string());
    let mut loaded = Loaded::default();
    // A relative name keeps the outputs free of the machine's paths.
    load_str(Path::new(&format!("{case}.in.yaml")), text, &mut loaded);
    let compiled = compile(&loaded.specs, &CompileOptions { region });
    let mut verdicts = compiled.verdicts.clone();
    verdicts.extend(loaded.refused.iter().cloned());
    verdicts.sort_by(|a, b| a.object.cmp(&b.object));
    let golden = Golden {
        table: &compiled.table,
        verdicts,
        problems: &loaded.problems,
        notices: &loaded.notices,
    };
    yaml::to_yaml(&golden).expect("golden output serialises")
}

#[test]
fn every_golden_case_compiles_to_its_recorded_output() {
    golden::check(&golden_dir(), 15, render);
}

#[test]
fn every_golden_output_has_an_input() {
    golden::every_output_has_an_input(&golden_dir());
}

#[test]
fn golden_outputs_never_contain_a_password() {
    for entry in std::fs::read_dir(golden_dir()).expect("tests/golden exists") {
        let path = entry.expect("dir entry").path();
        if path.to_string_lossy().ends_with(".out.yaml") {
            let text = std::fs::read_to_string(&path).expect("readable");
            // Every password in the inputs starts with `pw-` (see the cases).
            assert!(!text.contains("pw-"), "{} leaks a password", path.display());
        }
    }
}

#[test]
fn compile_gives_the_same_answer_whatever_the_order_of_its_inputs() {
    for entry in std::fs::read_dir(golden_dir()).expect("tests/golden exists") {
        let path = entry.expect("dir entry").path();
        if !path.to_string_lossy().ends_with(".in.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable case");
        let mut loaded = Loaded::default();
        load_str(&path, &text, &mut loaded);
        let forward = compile(&loaded.specs, &CompileOptions::default());
        let mut reversed = loaded.specs.clone();
        reversed.inbound.reverse();
        reversed.outbound.reverse();
        reversed.transfers.reverse();
        let backward = compile(&reversed, &CompileOptions::default());
        assert_eq!(
            yaml::to_yaml(&forward.verdicts).expect("serialises"),
            yaml::to_yaml(&backward.verdicts).expect("serialises"),
            "{}: verdicts depend on input order",
            path.display()
        );
        assert_eq!(
            forward.table.config_hash(),
            backward.table.config_hash(),
            "{}: table depends on input order",
            path.display()
        );
    }
}
