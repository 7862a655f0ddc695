//! The report of `trunkline check`: what the loader refused and what compile decided, one entry
//! per object with the file and line it came from, every problem with its field path, and a
//! summary. Pure: takes what the folder source loaded, gives a report; the CLI prints it.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::compile::compile;
use super::diagnostic::{Severity, State, Verdict};
use super::manifest::{LoadProblem, Loaded};
use super::specs::CompileOptions;

/// One object's verdict and where it was written.
#[derive(Clone, Debug, Serialize)]
pub struct ObjectReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Counts for the last line of the report and for CI tools.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub files: usize,
    pub objects: usize,
    pub accepted: usize,
    pub degraded: usize,
    pub refused: usize,
    pub warnings: usize,
    /// Problems not attributable to one object (YAML syntax, unknown kinds, duplicates).
    pub file_errors: usize,
}

/// The whole result of a check.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub objects: Vec<ObjectReport>,
    pub problems: Vec<LoadProblem>,
    pub notices: Vec<String>,
    pub summary: Summary,
}

impl CheckReport {
    /// Compiles what was loaded and merges the loader's refusals into one report.
    pub fn build(loaded: Loaded, options: &CompileOptions) -> CheckReport {
        let compiled = compile(&loaded.specs, options);
        let mut verdicts = compiled.verdicts;
        verdicts.extend(loaded.refused);
        verdicts.sort_by(|a, b| a.object.cmp(&b.object));

        let mut summary = Summary {
            files: loaded.files,
            file_errors: loaded.problems.len(),
            ..Summary::default()
        };
        let objects: Vec<ObjectReport> = verdicts
            .into_iter()
            .map(|verdict| {
                summary.objects += 1;
                match verdict.state {
                    State::Accepted => summary.accepted += 1,
                    State::Degraded => summary.degraded += 1,
                    State::Refused => summary.refused += 1,
                }
                summary.warnings +=
                    verdict.diagnostics.iter().filter(|d| d.severity == Severity::Warning).count();
                let origin = loaded.origins.get(&verdict.object);
                ObjectReport {
                    file: origin.map(|o| o.file.clone()),
                    line: origin.map(|o| o.line),
                    verdict,
                }
            })
            .collect();
        CheckReport { objects, problems: loaded.problems, notices: loaded.notices, summary }
    }

    /// Does this report fail the check? Any refused object or file error does; with `strict`,
    /// a degraded object does too.
    pub fn fails(&self, strict: bool) -> bool {
        self.summary.refused > 0
            || self.summary.file_errors > 0
            || (strict && self.summary.degraded > 0)
    }

    /// The report as a person reads it: one line per object, its problems indented under it.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            let _ = write!(out, "{}", p.file.display());
            if let Some(line) = p.line {
                let _ = write!(out, ":{line}");
            }
            let _ = write!(out, ": error");
            if let Some(object) = &p.object {
                let _ = write!(out, " in {object}");
            }
            if !p.field.is_empty() {
                let _ = write!(out, " at {}", p.field);
            }
            let _ = writeln!(out, " ({}): {}", p.reason, p.message);
        }
        for o in &self.objects {
            let v = &o.verdict;
            if let Some(file) = &o.file {
                let _ = write!(out, "{}", file.display());
                if let Some(line) = o.line {
                    let _ = write!(out, ":{line}");
                }
                out.push_str(": ");
            }
            let _ = write!(out, "{}: {}", v.object, v.state.as_str());
            if let (Some(n), false) = (v.numbers, v.state == State::Refused) {
                let _ = write!(out, " ({} number{}", n.accepted, plural(n.accepted as usize));
                if n.conflicting > 0 {
                    let _ = write!(out, ", {} held by other trunks", n.conflicting);
                }
                out.push(')');
            }
            out.push('\n');
            for d in &v.diagnostics {
                let label = match d.severity {
                    Severity::Fatal => "error",
                    Severity::Degraded => "degraded",
                    Severity::Warning => "warning",
                };
                let field = if d.field.is_empty() { "(object)" } else { d.field.as_str() };
                let _ = writeln!(out, "    {label} {field} ({}): {}", d.reason, d.message);
            }
        }
        for n in &self.notices {
            let _ = writeln!(out, "note: {n}");
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "{} file{}, {} object{}: {} accepted, {} degraded, {} refused; {} warning{}{}",
            s.files,
            plural(s.files),
            s.objects,
            plural(s.objects),
            s.accepted,
            s.degraded,
            s.refused,
            s.warnings,
            plural(s.warnings),
            if s.file_errors > 0 {
                format!("; {} file error{}", s.file_errors, plural(s.file_errors))
            } else {
                String::new()
            },
        );
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
