//! What a bundle says, for people: the summary `eucora evidence show` prints, and `REPORT.html`,
//! the self-contained page a bundle carries (no script, no external resource): the same summary
//! and a section with its trail in words and every control's verdict for each change to follow
//! up (every change before evidence/v5). Both are functions of the bundle's own content, so the
//! verifier recomputes `REPORT.html` like the controls.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use eucora_projections::describe::event_line;
use serde_json::Value;

use super::changes::column;
use super::controls::{
    rfc3339, ControlsFile, IntentControls, CONTROLS, FAIL, NOT_APPLICABLE, OPEN, PASS,
};
use super::format::Format;
use super::population::Population;

/// The four verdicts, in the order the summary counts them.
const VERDICTS: [&str; 4] = [PASS, FAIL, NOT_APPLICABLE, OPEN];

/// A bundle's summary.
pub struct Summary {
    /// `the period from … to …` or `deployment …`.
    pub scope: String,
    pub as_of: Option<DateTime<Utc>>,
    pub tree_size: u64,
    pub intents: usize,
    /// Each control's count of each verdict, in [`VERDICTS`] order.
    pub counts: Vec<(&'static str, [usize; 4])>,
    /// Each failing verdict: the change's id, app, version and reference, the control and why.
    pub failing: Vec<[String; 6]>,
    /// Each policy named: its digest's first 12 digits, and how many changes were judged under it.
    pub policies: Vec<(String, usize)>,
    /// How many commands were refused, by reason.
    pub refused: std::collections::BTreeMap<String, usize>,
}

/// The scope of a predicate, in words.
pub fn scope_words(scope: &Value) -> String {
    match (
        scope["from"].as_str(),
        scope["to"].as_str(),
        scope["deployment_id"].as_str(),
    ) {
        (Some(from), Some(to), _) => format!("the period from {from} to {to}"),
        (_, _, Some(id)) => format!("deployment {id}"),
        _ => "an unknown scope".into(),
    }
}

impl Summary {
    pub fn new(
        scope: &Value,
        as_of: Option<DateTime<Utc>>,
        tree_size: u64,
        population: &Population,
        controls: &ControlsFile,
    ) -> Summary {
        let rows = population.rows();
        let counts = CONTROLS
            .iter()
            .map(|control| {
                let mut n = [0; 4];
                for v in controls
                    .intents
                    .iter()
                    .flat_map(|i| &i.controls)
                    .filter(|v| v.control == *control)
                {
                    if let Some(k) = VERDICTS.iter().position(|x| *x == v.verdict) {
                        n[k] += 1;
                    }
                }
                (*control, n)
            })
            .collect();
        let failing = controls
            .failing()
            .map(|(id, v)| {
                let fact = |name: &str| {
                    id.and_then(|id| rows.get(id))
                        .map(|r| column(r, name).to_string())
                        .unwrap_or_default()
                };
                [
                    id.unwrap_or_default().to_string(),
                    fact("app_name"),
                    fact("version"),
                    fact("change_ref"),
                    v.control.clone(),
                    v.detail.clone(),
                ]
            })
            .collect();
        Summary {
            scope: scope_words(scope),
            as_of,
            tree_size,
            intents: population.intent_count(),
            counts,
            failing,
            policies: controls
                .policies
                .iter()
                .map(|p| (p.digest.chars().take(12).collect(), p.judged.len()))
                .collect(),
            refused: controls
                .refused_commands
                .iter()
                .fold(Default::default(), |mut n, r| {
                    *n.entry(r.reason.clone()).or_default() += 1;
                    n
                }),
        }
    }

    /// The summary as `eucora evidence show` prints it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "scope:        {}", self.scope);
        let _ = writeln!(
            out,
            "judged as of: {}",
            self.as_of
                .map(rfc3339)
                .unwrap_or_else(|| "(an earlier release's bundle: not recorded)".into())
        );
        let _ = writeln!(out, "checkpoint:   tree size {}", self.tree_size);
        let _ = writeln!(out, "population:   {} changes", self.intents);
        // Only when there are any: a bundle of an earlier release recomputes the same text.
        if !self.policies.is_empty() {
            let named: Vec<String> = self
                .policies
                .iter()
                .map(|(digest, n)| format!("{digest} ({n} changes)"))
                .collect();
            let _ = writeln!(out, "policies:     {}", named.join(", "));
        }
        if !self.refused.is_empty() {
            let named: Vec<String> = self
                .refused
                .iter()
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect();
            let _ = writeln!(out, "refused:      {}", named.join(", "));
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<32} {:>5} {:>5} {:>15} {:>5}",
            "CONTROL", "PASS", "FAIL", "NOT APPLICABLE", "OPEN"
        );
        for (control, n) in &self.counts {
            let _ = writeln!(
                out,
                "{control:<32} {:>5} {:>5} {:>15} {:>5}",
                n[0], n[1], n[2], n[3]
            );
        }
        let _ = writeln!(out);
        if self.failing.is_empty() {
            let _ = writeln!(out, "no control fails");
        } else {
            let _ = writeln!(out, "failing:");
            for [id, app, version, change_ref, control, detail] in &self.failing {
                let reference = if change_ref.is_empty() {
                    String::new()
                } else {
                    format!(" ({change_ref})")
                };
                let _ = writeln!(
                    out,
                    "  {app} {version}{reference} {id}: {control}: {detail}"
                );
            }
        }
        out
    }
}

/// The policies in force and the refused commands, each a section only when there are any.
fn governance_html(out: &mut String, controls: &ControlsFile) {
    let or_dash = |v: &Option<String>| escape(v.as_deref().unwrap_or("-")).into_owned();
    if !controls.policies.is_empty() {
        out.push_str("<h2>Policies in force</h2>\n<table>\n<tr><th>digest</th><th>activated</th><th>by</th><th>source</th><th>replaced</th><th>leaf</th><th>changes judged under it</th></tr>\n");
        for p in &controls.policies {
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(&p.digest),
                or_dash(&p.activated_at),
                or_dash(&p.activated_by),
                or_dash(&p.source),
                or_dash(&p.previous_digest),
                p.leaf.map_or_else(|| "-".to_string(), |l| l.to_string()),
                p.judged.len()
            );
        }
        out.push_str("</table>\n");
    }
    if !controls.refused_commands.is_empty() {
        out.push_str("<h2>Refused commands</h2>\n<table>\n<tr><th>leaf</th><th>at</th><th>subject</th><th>role</th><th>command</th><th>intent</th><th>reason</th></tr>\n");
        for r in &controls.refused_commands {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.leaf,
                escape(&r.at),
                escape(&r.subject),
                escape(&r.role),
                escape(&r.command),
                or_dash(&r.intent),
                escape(&r.reason)
            );
        }
        out.push_str("</table>\n");
    }
}

/// Text as HTML character data or an attribute value: never markup.
fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What a bundle's events derive, as a release writing `format` writes it: the controls, and the
/// three files that are functions of the events. The exporter writes them; the verifier
/// recomputes and compares them.
pub struct Derived {
    pub controls: ControlsFile,
    pub controls_json: Vec<u8>,
    pub changes_csv: Vec<u8>,
    pub report_html: Vec<u8>,
}

/// [`Derived`] of `population`, judged at `as_of`, under the checkpoint of `tree_size`; the three
/// files are written at once, each on a thread of its own.
pub fn derive(
    format: Format,
    scope: &Value,
    as_of: DateTime<Utc>,
    tree_size: u64,
    population: &Population,
) -> Result<Derived, serde_json::Error> {
    let controls = population.controls(as_of);
    // The three files at once, each on a thread of its own.
    let (controls_json, changes_csv, report_html) = std::thread::scope(|threads| {
        let report = threads.spawn(|| {
            let summary = Summary::new(scope, Some(as_of), tree_size, population, &controls);
            report_html(format, &summary, population, &controls)
        });
        let changes = threads.spawn(|| population.changes_csv(format));
        let json = controls.json(format);
        (json, super::joined(changes), super::joined(report))
    });
    Ok(Derived {
        controls_json: controls_json?,
        controls,
        changes_csv: changes_csv.into_bytes(),
        report_html: report_html.into_bytes(),
    })
}

/// `REPORT.html` as a bundle of `format` holds it: the summary, then a section for each change
/// to follow up (a control failing or open) from evidence/v5, for every change before it.
fn report_html(
    format: Format,
    summary: &Summary,
    population: &Population,
    controls: &ControlsFile,
) -> String {
    let rows = population.rows();
    let shown = |intent: &IntentControls| {
        !format.lean()
            || intent
                .controls
                .iter()
                .any(|v| v.verdict == FAIL || v.verdict == OPEN)
    };
    // About 300 bytes an event: sized at once, as growing it by copies costs more than writing.
    let events: usize = population
        .histories()
        .zip(&controls.intents)
        .filter(|(_, intent)| shown(intent))
        .map(|((_, events), _)| events.len())
        .sum();
    let mut out = String::with_capacity(8192 + events * 320);
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>EUCORA evidence</title>\n<style>\n\
         body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#111}\n\
         table{border-collapse:collapse;margin:.5rem 0}\n\
         th,td{border:1px solid #999;padding:.25rem .5rem;text-align:left;vertical-align:top}\n\
         .fail{color:#a00000;font-weight:bold}.open{color:#7a4b00}\n\
         ol.trail{font-family:ui-monospace,monospace;font-size:.9rem}\n\
         </style>\n</head>\n<body>\n",
    );
    let _ = writeln!(out, "<h1>EUCORA evidence: {}</h1>", escape(&summary.scope));
    let _ = writeln!(
        out,
        "<p>Judged as of {}, under the signed checkpoint of tree size {}; {} changes. Verify the \
         bundle with <code>eucora evidence verify</code> (VERIFY.md) before relying on it.</p>",
        escape(
            &summary
                .as_of
                .map(rfc3339)
                .unwrap_or_else(|| "(not recorded)".into())
        ),
        summary.tree_size,
        summary.intents
    );
    out.push_str("<h2>Controls</h2>\n<table>\n<tr><th>control</th><th>pass</th><th>fail</th><th>not applicable</th><th>open</th></tr>\n");
    for (control, n) in &summary.counts {
        let _ = writeln!(
            out,
            "<tr><td>{control}</td><td>{}</td><td{}>{}</td><td>{}</td><td>{}</td></tr>",
            n[0],
            if n[1] > 0 { " class=\"fail\"" } else { "" },
            n[1],
            n[2],
            n[3]
        );
    }
    out.push_str("</table>\n");
    let _ = writeln!(
        out,
        "<p>Population complete: <strong>{}</strong> ({}).</p>",
        escape(&controls.population_complete.verdict),
        escape(&controls.population_complete.detail)
    );
    out.push_str("<h2>Failing</h2>\n");
    if summary.failing.is_empty() {
        out.push_str("<p>No control fails.</p>\n");
    } else {
        out.push_str("<table>\n<tr><th>change</th><th>app</th><th>version</th><th>reference</th><th>control</th><th>why</th></tr>\n");
        for [id, app, version, change_ref, control, detail] in &summary.failing {
            let _ = writeln!(
                out,
                "<tr><td><a href=\"#c-{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(app),
                escape(version),
                escape(change_ref),
                escape(control),
                escape(detail),
                id = escape(id)
            );
        }
        out.push_str("</table>\n");
    }
    governance_html(&mut out, controls);
    if format.lean() {
        let rest = controls.intents.iter().filter(|i| !shown(i)).count();
        let _ = writeln!(
            out,
            "<h2>Changes to follow up</h2>\n<p>Each change with a control failing or open, with \
             its trail. Changes that pass every control that applies to them, not shown here: \
             {rest} (<code>changes.csv</code> lists every change, <code>eucora evidence \
             sample</code> prints the trail of any).</p>"
        );
    } else {
        out.push_str("<h2>Changes</h2>\n");
    }
    for ((id, events), intent) in population
        .histories()
        .zip(&controls.intents)
        .filter(|(_, intent)| shown(intent))
    {
        let fact = |name: &str| {
            rows.get(id)
                .map(|r| escape(column(r, name)).into_owned())
                .unwrap_or_default()
        };
        let _ = writeln!(
            out,
            "<section id=\"c-{id}\">\n<h3>{} {}{}</h3>",
            fact("app_name"),
            fact("version"),
            if fact("change_ref").is_empty() {
                String::new()
            } else {
                format!(" ({})", fact("change_ref"))
            },
            id = escape(id)
        );
        let _ = writeln!(
            out,
            "<p>Change <code>{}</code>, requested by {} at {}; outcome: <strong>{}</strong>.</p>",
            escape(id),
            fact("requester"),
            fact("requested_at"),
            fact("outcome")
        );
        out.push_str("<ol class=\"trail\">\n");
        for (n, (index, event)) in events.iter().enumerate() {
            let _ = writeln!(
                out,
                "<li>leaf {index}: {}</li>",
                escape(&event_line(n as i64 + 1, event))
            );
        }
        out.push_str("</ol>\n<table>\n<tr><th>control</th><th>verdict</th><th>why</th><th>leaves</th></tr>\n");
        for v in &intent.controls {
            let class = match v.verdict.as_str() {
                FAIL => " class=\"fail\"",
                OPEN => " class=\"open\"",
                _ => "",
            };
            let leaves: Vec<String> = v.leaves.iter().map(u64::to_string).collect();
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td{class}>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&v.control),
                escape(&v.verdict),
                escape(&v.detail),
                leaves.join(", ")
            );
        }
        out.push_str("</table>\n</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_any_text_is_shown_as_text() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
