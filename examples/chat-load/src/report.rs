//! The run's report: figures, checks, events and the time line, printed as
//! a table and written as JSON.

use crate::metrics::{LatencySummary, Sample};
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;

/// One named figure of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figure {
    /// What it measures.
    pub name: String,
    /// The value (number, text or null when not measured).
    pub value: Value,
    /// Unit, empty when none.
    pub unit: String,
}

/// A pass / fail verdict on a property the run is meant to show.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    /// The property.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// What was measured against what.
    pub detail: String,
}

/// Something that happened at a point in the run (flood start, fault
/// injected, recovery, ...), drawn as a marker on the plot.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Seconds since the start of the run.
    pub t_s: f64,
    /// Short label.
    pub what: String,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The options it ran with.
    pub config: Value,
    /// Measured figures, in reading order.
    pub figures: Vec<Figure>,
    /// Verdicts; any failure makes the tool exit 1.
    pub checks: Vec<Check>,
    /// Marked moments.
    pub events: Vec<Event>,
    /// Per-bin counters.
    pub timeline: Vec<Sample>,
    /// The chat capacity (for the plot's reference line), when known.
    pub capacity: Option<u64>,
    /// What the time line's latency samples measure (the plot's third
    /// panel title).
    pub latency_label: String,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &str) -> Self {
        Report {
            scenario: scenario.to_string(),
            config: Value::Null,
            figures: Vec::new(),
            checks: Vec::new(),
            events: Vec::new(),
            timeline: Vec::new(),
            capacity: None,
            latency_label: "chat message latency (send → delivered)".to_string(),
        }
    }

    /// Adds a figure.
    pub fn figure(&mut self, name: &str, value: impl Into<Value>, unit: &str) {
        self.figures.push(Figure {
            name: name.to_string(),
            value: value.into(),
            unit: unit.to_string(),
        });
    }

    /// Adds a number rounded to three decimals (null when absent).
    pub fn number(&mut self, name: &str, value: Option<f64>, unit: &str) {
        let v = value
            .filter(|v| v.is_finite())
            .map(|v| Value::from((v * 1000.0).round() / 1000.0))
            .unwrap_or(Value::Null);
        self.figure(name, v, unit);
    }

    /// Adds p50 / p99 / p99.9 / max figures for a latency distribution.
    pub fn latency(&mut self, name: &str, s: &LatencySummary) {
        self.figure(&format!("{name} samples"), s.count, "");
        self.number(&format!("{name} p50"), s.p50_ms, "ms");
        self.number(&format!("{name} p99"), s.p99_ms, "ms");
        self.number(&format!("{name} p99.9"), s.p999_ms, "ms");
        self.number(&format!("{name} max"), s.max_ms, "ms");
    }

    /// Adds a check.
    pub fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_string(),
            passed,
            detail: detail.into(),
        });
    }

    /// Marks an event.
    pub fn event(&mut self, t_s: f64, what: &str) {
        self.events.push(Event {
            t_s,
            what: what.to_string(),
        });
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// Looks a figure up by name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| &f.value)
    }

    /// The summary table printed on stdout.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 2]> = self
            .figures
            .iter()
            .map(|f| {
                let v = format_value(&f.value);
                let v = if f.unit.is_empty() || f.value.is_null() {
                    v
                } else {
                    format!("{v} {}", f.unit)
                };
                [f.name.clone(), v]
            })
            .collect();
        let events: Vec<[String; 2]> = self
            .events
            .iter()
            .map(|e| [format!("t={:.2}s", e.t_s), e.what.clone()])
            .collect();
        let checks: Vec<[String; 2]> = self
            .checks
            .iter()
            .map(|c| {
                let verdict = if c.passed { "PASS" } else { "FAIL" };
                [format!("{verdict} {}", c.name), c.detail.clone()]
            })
            .collect();
        let width = rows
            .iter()
            .chain(&events)
            .chain(&checks)
            .map(|r| r[0].chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "== chat-load {} ==", self.scenario);
        for (title, section) in [("figures", &rows), ("events", &events), ("checks", &checks)] {
            if section.is_empty() {
                continue;
            }
            let _ = writeln!(out, "-- {title}");
            for [k, v] in section.iter() {
                let _ = writeln!(out, "  {k:<width$}  {v}");
            }
        }
        let verdict = if self.checks.is_empty() {
            "no checks"
        } else if self.passed() {
            "all checks passed"
        } else {
            "SOME CHECKS FAILED"
        };
        let _ = writeln!(out, "== {verdict}");
        out
    }
}

/// Formats an optional measurement for a check's detail: `"1.235 s"`, or
/// `"never"` when it did not happen.
pub fn opt(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) => format!(
            "{} {unit}",
            format_value(&Value::from((v * 1000.0).round() / 1000.0))
        ),
        None => "never".to_string(),
    }
}

fn format_value(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(f) = n.as_f64() {
                let s = format!("{f:.3}");
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                n.to_string()
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_figures_events_and_checks_aligned() {
        let mut r = Report::new("flood");
        r.figure("attempts", 500, "");
        r.number("reject answer p99", Some(1.23456), "ms");
        r.number("back to healthy after", None, "s");
        r.figure("final status", "healthy", "");
        r.event(3.0, "flood starts");
        r.check("cap held", true, "max in_use 50 <= capacity 50");
        let t = r.table();
        let want = "\
== chat-load flood ==
-- figures
  attempts               500
  reject answer p99      1.235 ms
  back to healthy after  -
  final status           healthy
-- events
  t=3.00s                flood starts
-- checks
  PASS cap held          max in_use 50 <= capacity 50
== all checks passed
";
        assert_eq!(t, want);
        assert!(r.passed());
        r.check("answered", false, "3 unanswered");
        assert!(!r.passed());
        assert!(r.table().ends_with("== SOME CHECKS FAILED\n"));
        assert!(r
            .table()
            .contains("  FAIL answered          3 unanswered\n"));
    }

    #[test]
    fn numbers_are_rounded_and_json_keeps_order() {
        let mut r = Report::new("steady");
        r.number("x", Some(2.0), "ms");
        r.number("nan", Some(f64::NAN), "");
        assert_eq!(r.get("x"), Some(&Value::from(2.0)));
        assert_eq!(r.get("nan"), Some(&Value::Null));
        assert_eq!(format_value(&Value::from(2.0)), "2");
        assert_eq!(format_value(&Value::from(0.5)), "0.5");
        assert_eq!(opt(Some(2.13494), "s"), "2.135 s");
        assert_eq!(opt(None, "s"), "never");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["figures"][0]["name"], "x");
        assert_eq!(j["scenario"], "steady");
    }
}
