//! Generated artifacts stay in step with the code: `crds/` is what `trunkline crds` writes.

use trunkline::api::Kind;
use trunkline::config::yaml::crd_yaml;

#[test]
fn committed_crds_equal_what_the_code_generates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut stale = Vec::new();
    for kind in Kind::ALL {
        let path = dir.join(kind.crd_file_name());
        let generated = crd_yaml(kind).expect("CRDs serialise");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRD files {stale:?}: run `cargo run -- crds --out crds` and commit the result"
    );
}

#[test]
fn every_crd_lists_the_trunkline_category_a_status_subresource_and_a_wide_reason_column() {
    for kind in Kind::ALL {
        let crd = kind.crd();
        assert_eq!(crd.spec.group, "trunkline.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        let categories = crd.spec.names.categories.clone().unwrap_or_default();
        assert!(categories.contains(&"trunkline".to_string()), "{kind} lacks the category");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
        let all = version.additional_printer_columns.iter().flatten();
        // `kubectl get` shows the priority-0 columns, Age last; `-o wide` adds the others after
        // them (as for Deployments), Reason among them.
        let columns: Vec<String> =
            all.clone().filter(|c| c.priority.unwrap_or(0) == 0).map(|c| c.name.clone()).collect();
        assert_eq!(columns.first().map(String::as_str), Some("Ready"), "{kind}: {columns:?}");
        assert_eq!(columns.last().map(String::as_str), Some("Age"), "{kind}: {columns:?}");
        let reason = all.clone().find(|c| c.name == "Reason").expect("a Reason column");
        assert_eq!(reason.priority, Some(1), "{kind}: Reason is for -o wide");
        assert_eq!(reason.json_path, ".status.conditions[?(@.type==\"Programmed\")].reason");
        assert!(!crd.spec.names.short_names.clone().unwrap_or_default().is_empty());
    }
}

#[test]
fn every_example_validates_against_the_crd_schema_and_compiles_without_a_fatal_diagnostic() {
    use trunkline::config::{CompileOptions, Severity, compile};
    use trunkline::source::folder::load_paths;

    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let loaded = load_paths(&[examples]);
    assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
    assert!(loaded.refused.is_empty(), "{:#?}", loaded.refused);
    assert!(loaded.files >= 6, "only {} example files were read", loaded.files);
    let compiled = compile(&loaded.specs, &CompileOptions::default());
    assert_eq!(compiled.verdicts.len(), 12);
    for verdict in &compiled.verdicts {
        let fatal: Vec<_> =
            verdict.diagnostics.iter().filter(|d| d.severity != Severity::Warning).collect();
        assert!(fatal.is_empty(), "{}: {fatal:#?}", verdict.object);
    }
}

#[test]
fn the_committed_session_record_schema_is_the_one_the_code_writes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/schemas/session-record-v1.json");
    let generated = trunkline::observe::record::schema_json();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("docs/schemas");
        std::fs::write(&path, &generated).expect("write the schema");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "stale {}: run `UPDATE_SCHEMA=1 cargo test --test generated` and commit the result",
        path.display()
    );
}
