//! The chart's alert rules (charts/trunkline/files/prometheus-rules.yaml) against the metrics the
//! binaries export: every `expr` must parse as PromQL once Helm's placeholders are filled from
//! values.yaml, and every metric it selects must be one that `GatewayMetrics` or
//! `OperatorMetrics` registers. A misspelt or renamed metric would make an alert that never
//! fires; this test fails instead.

// Test helpers fail with the reason (STYLE.md allows panics in tests; clippy only knows #[test]).
#![allow(clippy::panic, clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use serde_yaml::Value;
use support::promql::{exported, selected, unknown};

const RULES: &str = include_str!("../charts/trunkline/files/prometheus-rules.yaml");
const VALUES: &str = include_str!("../charts/trunkline/values.yaml");
const NAMESPACE: &str = "trunkline";

/// The rules file as Helm's `tpl` renders it with the default values: `.Values.*` from
/// values.yaml, `.Release.Namespace`, and the Go string literals that write `{{`/`}}` for
/// Prometheus. Any other action fails the test (the chart tests render the real thing).
fn fill_placeholders(template: &str) -> String {
    let values: Value = serde_yaml::from_str(VALUES).expect("values.yaml parses");
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let action = rest[start + 2..].trim_start();
        // A string literal may hold `}}`: the action ends after its closing quote.
        let (inner, after) = if let Some(literal) = action.strip_prefix('"') {
            let close = literal.find('"').expect("a closed string literal");
            let after = literal[close + 1..].trim_start();
            let after = after.strip_prefix("}}").expect("the action ends after its literal");
            (&action[..close + 2], after)
        } else {
            let end = action.find("}}").expect("a closed action");
            (action[..end].trim_end(), &action[end + 2..])
        };
        let filled = match inner {
            r#""{{""# => "{{".to_string(),
            r#""}}""# => "}}".to_string(),
            ".Release.Namespace" => NAMESPACE.to_string(),
            path if path.starts_with(".Values.") => {
                let mut value = &values;
                for key in path[".Values.".len()..].split('.') {
                    value = value
                        .get(key)
                        .unwrap_or_else(|| panic!("{{{{ {path} }}}}: no such key in values.yaml"));
                }
                match value {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.clone(),
                    other => panic!("{{{{ {path} }}}} is not a number or a string: {other:?}"),
                }
            }
            other => panic!("unexpected template action {{{{ {other} }}}}"),
        };
        out.push_str(&filled);
        rest = after;
    }
    out.push_str(rest);
    out
}

/// (alert, expr) of every rule of the file.
fn rules(text: &str) -> Vec<(String, String)> {
    let doc: Value = serde_yaml::from_str(&fill_placeholders(text)).expect("the rules are YAML");
    let mut found = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert").to_string();
            let expr = rule["expr"].as_str().expect("every rule has an expr").to_string();
            found.push((name, expr));
        }
    }
    found
}

/// Every (alert, metric) of `text` that no binary exports; an error when an expr does not parse.
fn unknown_metrics(text: &str) -> Result<Vec<(String, String)>, String> {
    let exported = exported();
    let mut found = Vec::new();
    for (alert, expr) in rules(text) {
        let metrics = selected(&expr).map_err(|e| format!("{alert}: {e}"))?;
        assert!(!metrics.is_empty(), "{alert} selects no metric: {expr}");
        for metric in unknown(&metrics, &exported) {
            found.push((alert.clone(), metric.clone()));
        }
    }
    Ok(found)
}

#[test]
fn every_alert_parses_and_selects_only_metrics_the_binaries_export() {
    let alerts = rules(RULES);
    assert!(alerts.len() >= 9, "{alerts:?}");
    assert_eq!(unknown_metrics(RULES), Ok(Vec::new()));
}

#[test]
fn the_alerts_cover_both_binaries_and_the_new_rtp_pool_metrics() {
    let used: BTreeSet<String> =
        rules(RULES).iter().flat_map(|(_, expr)| selected(expr).unwrap()).collect();
    for metric in [
        "trunkline_operator_leader",
        "trunkline_operator_objects",
        "trunkline_config_info",
        "trunkline_build_info",
        "trunkline_inbound_refusals_total",
        "trunkline_auth_failures_total",
        "trunkline_rtp_lost_packets_total",
        "trunkline_rtp_port_pairs",
        "trunkline_rtp_port_exhaustions_total",
    ] {
        assert!(used.contains(metric), "no alert uses {metric}");
    }
}

#[test]
fn a_misspelt_metric_fails_the_check() {
    let misspelt = RULES.replace("trunkline_rtp_port_pairs{", "trunkline_rtp_ports_pairs{");
    assert_ne!(misspelt, RULES);
    let unknown = unknown_metrics(&misspelt).unwrap();
    assert!(
        unknown.iter().any(|(alert, metric)| alert == "TrunklineRtpPortsNearlyExhausted"
            && metric == "trunkline_rtp_ports_pairs"),
        "{unknown:?}"
    );
    let broken = RULES.replace("max by (kind) (", "max by kind (");
    assert!(unknown_metrics(&broken).is_err(), "a PromQL syntax error must fail");
}
