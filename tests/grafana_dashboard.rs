//! The chart's Grafana dashboard (charts/trunkline/files/grafana-dashboard.json) against the
//! metrics the binaries export: every query of every panel, and of the templating variables,
//! must parse as PromQL once Grafana's variables are filled in, and every metric it selects must
//! be one that `GatewayMetrics` or `OperatorMetrics` registers. A misspelt or renamed metric
//! would leave a panel empty without anyone noticing; this test fails instead. The chart tests
//! (tests/chart/test_objects.py) check that the ConfigMap carries this file unchanged.

// Test helpers fail with the reason (STYLE.md allows panics in tests; clippy only knows #[test]).
#![allow(clippy::panic, clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::promql::{exported, selected, unknown};

const DASHBOARD: &str = include_str!("../charts/trunkline/files/grafana-dashboard.json");

/// A query as Prometheus would get it: Grafana's interval variables become a duration, every
/// other variable (`$trunk`, `${namespace}`, `[[x]]` is not used) a plain value. What is left
/// must be PromQL.
fn fill_variables(query: &str) -> String {
    let mut out = String::new();
    let mut rest = query;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').unwrap_or_else(|| panic!("unclosed ${{ in {query}"));
                // `${var:format}`: the name is before the colon.
                (braced[..end].split(':').next().unwrap_or_default(), &braced[end + 1..])
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        assert!(!name.is_empty(), "a lone $ in {query}");
        out.push_str(if name.starts_with("__") { "5m" } else { "x" });
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// A templating query as PromQL: `label_values(SELECTOR, label)` selects SELECTOR; Grafana's
/// other functions are refused (none is used, and each would need its own reading).
fn variable_promql(query: &str) -> String {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("a variable query that is not label_values(...): {query}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("label_values(metric, label) expected: {query}"));
    assert!(!label.trim().is_empty(), "no label in {query}");
    selector.trim().to_string()
}

/// (where, query) of every panel target, rows' nested panels included, and of every query
/// variable.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, found: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without an expr"));
                found.push((format!("panel {title:?}"), expr.to_string()));
            }
            panels(&panel["panels"], found);
        }
    }
    let mut found = Vec::new();
    panels(&dashboard["panels"], &mut found);
    for variable in dashboard["templating"]["list"].as_array().expect("templating.list") {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or_default();
        let query = match &variable["query"] {
            Value::String(q) => q.as_str(),
            other => other["query"].as_str().expect("a variable's query"),
        };
        found.push((format!("variable ${name}"), variable_promql(query)));
    }
    found
}

/// Every (where, metric) of the dashboard `text` that no binary exports; an error when a query
/// does not parse.
fn unknown_metrics(text: &str) -> Result<Vec<(String, String)>, String> {
    let dashboard: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let exported = exported();
    let mut found = Vec::new();
    for (place, query) in queries(&dashboard) {
        let metrics = selected(&fill_variables(&query)).map_err(|e| format!("{place}: {e}"))?;
        assert!(!metrics.is_empty(), "{place} selects no metric: {query}");
        for metric in unknown(&metrics, &exported) {
            found.push((place.clone(), metric.clone()));
        }
    }
    Ok(found)
}

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("the dashboard is JSON")
}

#[test]
fn every_query_parses_and_selects_only_metrics_the_binaries_export() {
    let all = queries(&dashboard());
    assert!(all.len() >= 20, "{all:?}");
    assert_eq!(unknown_metrics(DASHBOARD), Ok(Vec::new()));
}

#[test]
fn a_misspelt_metric_or_a_broken_query_fails_the_check() {
    let misspelt = DASHBOARD
        .replace("trunkline_call_setup_seconds_bucket", "trunkline_call_setup_second_bucket");
    assert_ne!(misspelt, DASHBOARD);
    let unknown = unknown_metrics(&misspelt).unwrap();
    assert!(
        unknown.iter().any(|(place, metric)| place == "panel \"Setup latency\""
            && metric == "trunkline_call_setup_second_bucket"),
        "{unknown:?}"
    );
    // A histogram is selected by its series, never by its bare name.
    let bare =
        DASHBOARD.replace("trunkline_rtp_jitter_seconds_bucket", "trunkline_rtp_jitter_seconds");
    assert!(!unknown_metrics(&bare).unwrap().is_empty());
    let variable = DASHBOARD
        .replace("label_values(trunkline_calls_total", "label_values(trunkline_call_total");
    assert_eq!(
        unknown_metrics(&variable).unwrap(),
        vec![("variable $trunk".to_string(), "trunkline_call_total".to_string())]
    );
    let broken = DASHBOARD.replace("sum by (reason) (", "sum by reason (");
    assert!(unknown_metrics(&broken).is_err(), "a PromQL syntax error must fail");
}

#[test]
fn grafana_variables_are_filled_the_way_prometheus_would_see_them() {
    assert_eq!(
        fill_variables(r#"rate(m{a=~"$trunk", b="${namespace:regex}"}[$__rate_interval])"#),
        r#"rate(m{a=~"x", b="x"}[5m])"#
    );
    assert_eq!(variable_promql(r#"label_values(m{a=~"$x"}, trunk)"#), r#"m{a=~"$x"}"#);
}

#[test]
fn the_dashboard_covers_what_issue_14_lists() {
    let used: BTreeSet<String> = queries(&dashboard())
        .iter()
        .flat_map(|(_, q)| selected(&fill_variables(q)).unwrap())
        .collect();
    for metric in [
        "trunkline_calls_total",
        "trunkline_active_calls",
        "trunkline_call_setup_seconds_bucket",
        "trunkline_auth_failures_total",
        "trunkline_inbound_refusals_total",
        "trunkline_outbound_refusals_total",
        "trunkline_rtp_lost_packets_total",
        "trunkline_rtp_packets_total",
        "trunkline_rtp_jitter_seconds_bucket",
        "trunkline_transfers_total",
        "trunkline_session_records_total",
        "trunkline_session_records_spool_bytes",
        "trunkline_config_info",
        "trunkline_config_reloads_total",
        "trunkline_config_applied_timestamp_seconds",
        "trunkline_rtp_port_pairs",
        "trunkline_operator_reconciles_total",
        "trunkline_operator_reconcile_seconds_bucket",
        "trunkline_operator_leader",
    ] {
        assert!(used.contains(metric), "no panel shows {metric}");
    }
}

#[test]
fn every_panel_queries_the_chosen_data_source_and_namespace() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{}", d["schemaVersion"]);
    let variables: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "namespace", "trunk"]);
    assert_eq!(d["templating"]["list"][0]["query"], "prometheus");
    for panel in d["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().unwrap();
            assert_eq!(
                expr.matches("trunkline_").count(),
                expr.matches(r#"{namespace=~"$namespace""#).count(),
                "{title}: a selector without the namespace: {expr}"
            );
        }
    }
}
