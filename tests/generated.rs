//! Generated artifacts stay in step with the code: `crds/` is what `trunkline crds` writes.

use trunkline::api::{Kind, crd_yaml};

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
fn every_crd_lists_the_trunkline_category_and_a_status_subresource() {
    for kind in Kind::ALL {
        let crd = kind.crd();
        assert_eq!(crd.spec.group, "trunkline.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        let categories = crd.spec.names.categories.clone().unwrap_or_default();
        assert!(categories.contains(&"trunkline".to_string()), "{kind} lacks the category");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
        let columns: Vec<String> =
            version.additional_printer_columns.iter().flatten().map(|c| c.name.clone()).collect();
        assert_eq!(columns.first().map(String::as_str), Some("Ready"), "{kind}: {columns:?}");
        assert_eq!(columns.last().map(String::as_str), Some("Age"), "{kind}: {columns:?}");
        assert!(!crd.spec.names.short_names.clone().unwrap_or_default().is_empty());
    }
}
