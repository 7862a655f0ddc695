//! The one place trunkline reads and writes YAML. `serde_yaml` is deprecated, so every other module
//! goes through [`from_yaml`], [`to_yaml`] and [`documents`] and the library can be swapped here.
//!
//! [`documents`] takes the text of a file that may hold several documents (`---`-separated, as
//! `kubectl apply -f` reads them) and gives each document as a JSON value with the line where it
//! starts, or the parse error with the line (in the file's numbering) where it failed. The folder
//! source (`source::folder`) calls it; the CLI and golden tests call `from_yaml`/`to_yaml`.
//!
//! The file is first cut at the document markers (`---` or `...` at column 0, followed by a blank
//! or the end of the line: YAML 1.2 §9.1 forbids them inside any scalar, so this cut is exact), and
//! each piece is parsed on its own by `serde_yaml::Deserializer::from_str`. That gives the start
//! line of every document, keeps a syntax error in one document from hiding the documents after it
//! (as `kubectl` does), and avoids libyaml's parser state after an error.

use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};

use crate::api::Kind;

/// A YAML document that does not parse, or a value that does not fit the type asked for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    /// 1-based line of the problem in the text given (the file), where the parser knows it.
    pub line: Option<usize>,
    /// 1-based column of the problem, where the parser knows it.
    pub column: Option<usize>,
    /// What is wrong, with line numbers (if any) in the file's numbering.
    pub message: String,
}

impl YamlError {
    /// Wraps a `serde_yaml` error of a text that starts at `first_line` (1-based) of the file.
    fn from_serde_yaml(error: &serde_yaml::Error, first_line: usize) -> YamlError {
        let offset = first_line.saturating_sub(1);
        let location = error.location();
        YamlError {
            line: location.as_ref().map(|l| l.line() + offset),
            column: location.as_ref().map(|l| l.column()),
            message: shift_line_numbers(&error.to_string(), offset),
        }
    }
}

/// Parses one YAML document into `T`.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_yaml::from_str(text).map_err(|e| YamlError::from_serde_yaml(&e, 1))
}

/// Writes `value` as one YAML document (no leading `---`).
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, YamlError> {
    serde_yaml::to_string(value).map_err(|e| YamlError::from_serde_yaml(&e, 1))
}

/// One document of a multi-document YAML text.
#[derive(Debug)]
pub struct Document {
    /// 1-based line of the file where the document's content starts (after any `---` line,
    /// comments and blank lines).
    pub start_line: usize,
    /// The document as a JSON value (mappings with string keys, as Kubernetes reads YAML), or why
    /// it does not parse.
    pub value: Result<serde_json::Value, YamlError>,
}

/// Splits `text` into its documents, skipping empty ones (a leading `---`, a trailing `---`, a
/// document of comments only or an explicit `null`).
pub fn documents(text: &str) -> Vec<Document> {
    let mut out = Vec::new();
    for piece in pieces(text) {
        let Some(start_line) = piece.content_line else { continue };
        for (n, doc) in serde_yaml::Deserializer::from_str(piece.text).enumerate() {
            // A piece holds one document, or more only after an explicit `...` end marker;
            // those later documents are given the piece's start line.
            let line = if n == 0 { start_line } else { piece.first_line };
            match serde_json::Value::deserialize(doc) {
                Ok(serde_json::Value::Null) => {}
                Ok(value) => out.push(Document { start_line: line, value: Ok(value) }),
                Err(e) => {
                    let error = YamlError::from_serde_yaml(&e, piece.first_line);
                    out.push(Document { start_line: line, value: Err(error) });
                    // After a syntax error libyaml's state is unusable: the rest of this piece is
                    // lost, the next piece starts afresh.
                    break;
                }
            }
        }
    }
    out
}

/// A run of lines between two document markers.
struct Piece<'a> {
    text: &'a str,
    /// 1-based line of the piece's first line (the `---` line, if it has one).
    first_line: usize,
    /// 1-based line of the first line that is not blank, a comment or a bare marker; `None` for
    /// a piece with no content.
    content_line: Option<usize>,
}

/// Cuts `text` before every `---` marker line. `...` end markers stay in their piece.
fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut content_line = None;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        if is_marker(line, "---") && offset > start {
            out.push(Piece { text: &text[start..offset], first_line, content_line });
            start = offset;
            first_line = number;
            content_line = None;
        }
        if content_line.is_none() && has_content(line) {
            content_line = Some(number);
        }
        offset += line.len();
    }
    if offset > start {
        out.push(Piece { text: &text[start..offset], first_line, content_line });
    }
    out
}

/// `---` or `...` at column 0, followed by white space or the end of the line.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Does this line hold part of a document (not blank, not a comment, not a bare marker)?
fn has_content(line: &str) -> bool {
    let rest = if is_marker(line, "---") || is_marker(line, "...") { &line[3..] } else { line };
    let rest = rest.trim_start();
    !(rest.is_empty() || rest.starts_with('#'))
}

/// Adds `offset` to every `line N` in a parser message, so that it names the file's lines.
fn shift_line_numbers(message: &str, offset: usize) -> String {
    if offset == 0 {
        return message.to_string();
    }
    let mut out = String::with_capacity(message.len() + 8);
    let mut rest = message;
    while let Some(at) = rest.find("line ") {
        let (before, after) = rest.split_at(at + "line ".len());
        out.push_str(before);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// The CRD of one kind as the YAML file committed under `crds/` (and in the chart). It lives here
/// rather than in `api`, which imports nothing else of the crate.
pub fn crd_yaml(kind: Kind) -> Result<String, YamlError> {
    let body = to_yaml(&kind.crd())?;
    Ok(format!("# Generated by `trunkline crds --out crds/`; do not edit.\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(text: &str) -> Vec<(usize, serde_json::Value)> {
        documents(text).into_iter().map(|d| (d.start_line, d.value.unwrap())).collect()
    }

    #[test]
    fn documents_give_their_start_lines_and_skip_empty_ones() {
        let text = "---\n# a comment\na: 1\n---\n\n---\nb: [x, y]\n...\n---\n";
        assert_eq!(values(text), vec![(3, json!({"a": 1})), (7, json!({"b": ["x", "y"]}))]);
    }

    #[test]
    fn a_document_can_start_on_its_marker_line() {
        let text = "a: 1\n--- {b: 2}\n";
        assert_eq!(values(text), vec![(1, json!({"a": 1})), (2, json!({"b": 2}))]);
    }

    #[test]
    fn a_marker_needs_column_zero_and_a_blank_after_it() {
        let text = "a: |\n  ---\n  text\nb: ---x\n";
        assert_eq!(values(text), vec![(1, json!({"a": "---\ntext\n", "b": "---x"}))]);
    }

    #[test]
    fn an_explicit_null_document_is_skipped() {
        assert_eq!(values("~\n---\na: 1\n"), vec![(3, json!({"a": 1}))]);
    }

    #[test]
    fn yaml_error_in_third_document_names_its_line() {
        let text = "a: 1\n---\nb: 2\n---\nc: 3\nd: [unclosed\ne: 5\n---\nf: 6\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 4);
        let error = docs[2].value.as_ref().unwrap_err();
        // The flow sequence opened on line 6 meets `e: 5` on line 7.
        assert_eq!(error.line, Some(7), "{error}");
        assert!(error.message.contains("at line 7 column 2"), "{error}");
        assert!(error.message.contains("flow sequence at line 6"), "{error}");
        assert_eq!(docs[2].start_line, 5);
        // The document after the broken one still loads.
        assert_eq!(docs[3].value.as_ref().unwrap(), &json!({"f": 6}));
        assert_eq!(docs[3].start_line, 9);
    }

    #[test]
    fn a_bad_indent_is_reported_at_its_line() {
        let text = "---\nx: 1\n---\nkind: A\nspec:\n  a: 1\n b: 2\n";
        let docs = documents(text);
        let error = docs[1].value.as_ref().unwrap_err();
        assert_eq!(error.line, Some(7), "{error}");
        assert!(error.message.contains("line 7"), "{error}");
    }

    #[test]
    fn line_numbers_in_messages_are_shifted() {
        assert_eq!(
            shift_line_numbers("bad at line 3 column 1, while parsing at line 1 column 1", 10),
            "bad at line 13 column 1, while parsing at line 11 column 1"
        );
    }

    #[test]
    fn from_yaml_and_to_yaml_round_trip() {
        let value: serde_json::Value = from_yaml("a: [1, two]\n").unwrap();
        assert_eq!(value, json!({"a": [1, "two"]}));
        let text = to_yaml(&value).unwrap();
        assert_eq!(from_yaml::<serde_json::Value>(&text).unwrap(), value);
    }

    #[test]
    fn from_yaml_error_carries_the_line() {
        let error = from_yaml::<serde_json::Value>("a: 1\nb: [\n").unwrap_err();
        assert!(error.line.is_some());
    }
}
