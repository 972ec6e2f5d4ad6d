//! The benchmark's output: a markdown report on stdout and the same figures,
//! with the command that produced each and the environment, as JSON in
//! `target/tideway/bench/results.json`.
//!
//! A figure with a target carries a ✓ or ✗: a missed target is reported as
//! missed, never dropped.

use serde_json::{json, Value};

/// How a figure is compared with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// The figure must be at most the target.
    AtMost,
    /// The figure must be at least the target.
    AtLeast,
}

/// One reported number.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub target: Option<(Cmp, f64)>,
    /// The command (or harness step) that produced it.
    pub command: String,
}

impl Figure {
    pub fn new(
        name: impl Into<String>,
        value: f64,
        unit: &str,
        command: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.to_string(),
            target: None,
            command: command.into(),
        }
    }

    pub fn target(mut self, cmp: Cmp, value: f64) -> Self {
        self.target = Some((cmp, value));
        self
    }

    /// `Some(true)` met, `Some(false)` missed (or not measurable), `None` no target.
    pub fn met(&self) -> Option<bool> {
        self.target.map(|(cmp, t)| match cmp {
            _ if self.value.is_nan() => false,
            Cmp::AtMost => self.value <= t,
            Cmp::AtLeast => self.value >= t,
        })
    }

    fn target_text(&self) -> String {
        match self.target {
            Some((Cmp::AtMost, t)) => format!("≤ {}", fmt_num(t)),
            Some((Cmp::AtLeast, t)) => format!("≥ {}", fmt_num(t)),
            None => String::new(),
        }
    }

    fn value_text(&self) -> String {
        if self.unit.is_empty() {
            fmt_num(self.value)
        } else {
            format!("{} {}", fmt_num(self.value), self.unit)
        }
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "value": if self.value.is_finite() { json!(self.value) } else { Value::Null },
            "unit": self.unit,
            "target": self.target.map(|(c, t)| json!({"cmp": match c { Cmp::AtMost => "<=", Cmp::AtLeast => ">=" }, "value": t})),
            "met": self.met(),
            "command": self.command,
        })
    }
}

/// A number with as many decimals as its size deserves.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: f64) -> String {
    if us.is_finite() {
        format!("{:.2}", us / 1000.0)
    } else {
        "n/a".to_string()
    }
}

/// One benchmark: a per-variant table, the headline figures, notes, and the
/// raw per-round data for the JSON.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub title: String,
    /// How the figures were produced (command lines, harness parameters).
    pub commands: Vec<String>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
    pub raw: Value,
}

impl Section {
    /// An empty section with its title, how it was produced, and the
    /// columns of its per-variant table.
    pub fn new(title: impl Into<String>, commands: Vec<String>, columns: &[&str]) -> Self {
        Self {
            title: title.into(),
            commands,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            ..Self::default()
        }
    }
}

/// Everything one run produced.
pub struct Report {
    pub mode: String,
    pub invocation: String,
    pub machine: Value,
    pub sections: Vec<Section>,
    pub elapsed_s: f64,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("## Tideway benchmarks ({} mode)\n\n", self.mode));
        out.push_str(&format!(
            "Command: `{}` ({:.0} s)\n\n",
            self.invocation, self.elapsed_s
        ));
        out.push_str(&format!(
            "Machine: {}\n\n",
            super::machine::summary(&self.machine)
        ));
        out.push_str("| Benchmark | Figure | Value | Target | Met |\n|---|---|---|---|---|\n");
        for s in &self.sections {
            for f in &s.figures {
                let met = match f.met() {
                    Some(true) => "✓",
                    Some(false) => "✗",
                    None => "",
                };
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    s.title,
                    f.name,
                    f.value_text(),
                    f.target_text(),
                    met
                ));
            }
        }
        out.push('\n');
        for s in &self.sections {
            out.push_str(&format!("### {}\n\n", s.title));
            for c in &s.commands {
                out.push_str(&format!("- `{c}`\n"));
            }
            if !s.commands.is_empty() {
                out.push('\n');
            }
            if !s.columns.is_empty() {
                out.push_str(&format!("| {} |\n", s.columns.join(" | ")));
                out.push_str(&format!("|{}\n", "---|".repeat(s.columns.len())));
                for row in &s.rows {
                    out.push_str(&format!("| {} |\n", row.join(" | ")));
                }
                out.push('\n');
            }
            for n in &s.notes {
                out.push_str(&format!("{n}\n\n"));
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "mode": self.mode,
            "invocation": self.invocation,
            "elapsed_s": self.elapsed_s,
            "environment": self.machine,
            "benchmarks": self.sections.iter().map(|s| json!({
                "title": s.title,
                "commands": s.commands,
                "table": {"columns": s.columns, "rows": s.rows},
                "figures": s.figures.iter().map(Figure::json).collect::<Vec<_>>(),
                "notes": s.notes,
                "raw": s.raw,
            })).collect::<Vec<_>>(),
        })
    }
}
