//! Counters of US dollars: they grow by fractions, which the `metrics` crate's whole-number
//! counters cannot hold, so they are kept here and written into the rendered text as counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// A series: its name and its labels, in order.
type Series = (&'static str, Vec<(&'static str, String)>);

static TOTALS: Mutex<BTreeMap<Series, f64>> = Mutex::new(BTreeMap::new());

/// Adds `usd` to a series.
pub(super) fn add(name: &'static str, labels: Vec<(&'static str, String)>, usd: f64) {
    let mut totals = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
    *totals.entry((name, labels)).or_default() += usd;
}

/// Escapes a label value as the text format wants it.
fn escaped(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The series as Prometheus text, each name with its help.
pub(super) fn text(help: &[(&str, &str)]) -> String {
    let totals = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    for (name, what) in help {
        let _ = writeln!(out, "# HELP {name} {what}\n# TYPE {name} counter");
        for ((series, labels), value) in totals.iter().filter(|((n, _), _)| n == name) {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escaped(v)))
                .collect();
            let _ = writeln!(out, "{series}{{{}}} {value}", labels.join(","));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn fractions_add_up_and_labels_are_escaped() {
        super::add("test_usd_total", vec![("app", "a\"b".into())], 0.25);
        super::add("test_usd_total", vec![("app", "a\"b".into())], 0.5);
        let text = super::text(&[("test_usd_total", "test")]);
        assert!(text.contains("# TYPE test_usd_total counter"), "{text}");
        assert!(
            text.contains("test_usd_total{app=\"a\\\"b\"} 0.75"),
            "{text}"
        );
    }
}
