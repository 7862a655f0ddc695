//! YAML → specs → compile (`config::manifest`, `config::compile`, `config::check`): what
//! `trunkline check`, the folder source and the operator read from a spec author. Never
//! panics, whatever the text; the report renders.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use trunkline::config::check::CheckReport;
use trunkline::config::manifest::{Loaded, load_str};
use trunkline::config::specs::CompileOptions;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut loaded = Loaded::default();
    load_str(Path::new("fuzz.yaml"), text, &mut loaded);
    for region in [None, Some("us".to_string())] {
        let report = CheckReport::build(loaded.clone(), &CompileOptions { region });
        let _ = report.render_text();
        let _ = report.fails(true);
    }
});
