//! PromQL in the chart's files (alert rules, the Grafana dashboard) against the metrics the
//! binaries export: which metric names an expression selects, and which names the gateway and
//! the operator register. Used by `tests/prometheus_rules.rs` and `tests/grafana_dashboard.rs`,
//! so that both check queries the same way.

use std::collections::BTreeSet;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use trunkline::observe::metrics::GatewayMetrics;
use trunkline::operator::metrics::OperatorMetrics;

/// Every series name the gateway or the operator can export (histograms as `_bucket`, `_sum`
/// and `_count`).
pub fn exported() -> BTreeSet<String> {
    GatewayMetrics::metric_names().into_iter().chain(OperatorMetrics::metric_names()).collect()
}

/// The metric names `expr` selects: an error when it does not parse, or when a selector names
/// no metric (`{job="x"}`, or a regex on `__name__`), which no check could follow.
pub fn selected(expr: &str) -> Result<BTreeSet<String>, String> {
    let parsed = parser::parse(expr).map_err(|e| format!("{e}\n{expr}"))?;
    let mut selected = Selected(BTreeSet::new());
    walk_expr(&mut selected, &parsed)?;
    Ok(selected.0)
}

/// Of `selected`, the names no binary exports.
pub fn unknown<'a>(selected: &'a BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<&'a String> {
    selected.iter().filter(|m| !exported.contains(*m)).collect()
}

struct Selected(BTreeSet<String>);

impl Selected {
    fn add(&mut self, selector: &VectorSelector) -> Result<(), String> {
        let by_matcher = selector
            .matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && m.op == MatchOp::Equal)
            .map(|m| m.value.clone());
        match selector.name.clone().or(by_matcher) {
            Some(name) => {
                self.0.insert(name);
                Ok(())
            }
            None => Err(format!("a selector without a metric name: {selector}")),
        }
    }
}

impl ExprVisitor for Selected {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        match expr {
            Expr::VectorSelector(selector) => self.add(selector)?,
            Expr::MatrixSelector(matrix) => self.add(&matrix.vs)?,
            _ => {}
        }
        Ok(true)
    }
}
