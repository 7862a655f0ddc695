//! The golden-file check shared by `tests/golden.rs` (compile) and `tests/fleet_golden.rs`
//! (fleet rendering): every `<case>.in.yaml` of a folder, rendered, must equal its
//! `<case>.out.yaml`; `UPDATE_GOLDEN=1` rewrites the outputs instead. Included with
//! `#[path = "support/golden.rs"] mod golden;` (it needs nothing else of the harness).

use std::path::{Path, PathBuf};

/// The `*.in.yaml` files of `dir`, sorted.
pub fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the golden folder is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    cases.sort();
    cases
}

/// `<case>` of `<case>.in.yaml`.
pub fn case_name(input: &Path) -> String {
    let file = input.file_name().and_then(|f| f.to_str()).expect("UTF-8 file name");
    file.trim_end_matches(".in.yaml").to_string()
}

/// Renders every case of `dir` with `render(case, input text)` and compares it with the recorded
/// output (or rewrites it under `UPDATE_GOLDEN=1`); at least `at_least` cases must exist.
pub fn check(dir: &Path, at_least: usize, render: impl Fn(&str, &str) -> String) {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let cases = cases(dir);
    assert!(cases.len() >= at_least, "expected at least {at_least} cases in {}", dir.display());
    let mut mismatched = Vec::new();
    for input in &cases {
        let case = case_name(input);
        let text = std::fs::read_to_string(input).expect("readable case");
        let actual = render(&case, &text);
        let out_path = dir.join(format!("{case}.out.yaml"));
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
        "{} golden case(s) in {} differ (UPDATE_GOLDEN=1 rewrites them):\n{}",
        mismatched.len(),
        dir.display(),
        mismatched.join("\n")
    );
}

/// Every `<case>.out.yaml` of `dir` has its `<case>.in.yaml` (an output left behind by a
/// removed case would never be checked).
pub fn every_output_has_an_input(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("the golden folder is readable") {
        let path = entry.expect("dir entry").path();
        let name = path.to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".out.yaml") {
            assert!(Path::new(&format!("{stem}.in.yaml")).exists(), "{name} has no input");
        }
    }
}
