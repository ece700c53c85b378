//! `eucora evidence sample`: a sample of a bundle's changes drawn by a seeded algorithm an auditor
//! can redo by hand (docs/evidence.md, "Sampling"), each change with its whole trail.
//!
//! Every change gets `u = (n + 0.5) / 2^64`, where `n` is the first 8 bytes, big-endian, of the
//! SHA-256 of the text `SEED:DEPLOYMENT_ID`, and a weight `w`: the product of the weights given
//! for the attributes it has (1 for none). Its key is `ln(u) / w`; the sample is the `size`
//! changes with the largest keys (weighted sampling without replacement, Efraimidis and
//! Spirakis), ties by id.

use std::collections::BTreeMap;
use std::fmt::Write;

use eucora_projections::describe::event_line;
use eucora_projections::event::DeploymentEvent;
use sha2::{Digest, Sha256};

use super::changes::{row, COLUMNS};
use super::controls::{ControlsFile, FAIL, OPEN};
use super::population::Population;

/// The attributes a weight may name, and what gives a change each.
pub const ATTRIBUTES: [(&str, &str); 6] = [
    ("emergency", "cleared as an emergency change"),
    ("cab_required", "the CAB had to decide"),
    ("rejected", "rejected (by the CAB, or retrospectively)"),
    ("rolled_back", "rolled back"),
    ("failed", "a control fails"),
    ("open", "a control is open"),
];

/// A sample's parameters, as the auditor gave them.
#[derive(Debug, Clone)]
pub struct Plan {
    pub size: usize,
    pub seed: String,
    /// Attribute and weight, from `--weight NAME=W`.
    pub weights: BTreeMap<String, f64>,
}

/// Reads `NAME=W` (a weight above 0 for one of [`ATTRIBUTES`]).
pub fn parse_weight(text: &str) -> Result<(String, f64), String> {
    let names: Vec<&str> = ATTRIBUTES.iter().map(|(n, _)| *n).collect();
    let (name, weight) = text
        .split_once('=')
        .ok_or_else(|| format!("--weight {text:?} is not NAME=WEIGHT (such as emergency=3)"))?;
    if !names.contains(&name) {
        return Err(format!(
            "--weight {name:?}: an attribute is one of {}",
            names.join(", ")
        ));
    }
    match weight.parse::<f64>() {
        Ok(w) if w.is_finite() && w > 0.0 => Ok((name.to_string(), w)),
        _ => Err(format!(
            "--weight {text:?}: the weight must be a number above 0"
        )),
    }
}

/// One change drawn.
pub struct Drawn<'a> {
    pub id: &'a str,
    pub key: f64,
    pub weight: f64,
    pub events: &'a [(u64, DeploymentEvent)],
}

/// `u` for one change: from the SHA-256 of `SEED:ID`.
fn uniform(seed: &str, id: &str) -> f64 {
    let digest = Sha256::digest(format!("{seed}:{id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) as f64 + 0.5) / 18_446_744_073_709_551_616.0
}

/// Draws the sample.
pub fn draw<'a>(
    plan: &Plan,
    population: &'a Population,
    controls: &ControlsFile,
) -> Result<Vec<Drawn<'a>>, String> {
    let total = population.intent_count();
    if plan.size == 0 || plan.size > total {
        return Err(format!(
            "--size must be from 1 to the population's {total} changes, not {}",
            plan.size
        ));
    }
    let verdicts: BTreeMap<&str, Vec<&str>> = controls
        .intents
        .iter()
        .map(|i| {
            (
                i.deployment_id.as_str(),
                i.controls.iter().map(|v| v.verdict.as_str()).collect(),
            )
        })
        .collect();
    let mut drawn: Vec<Drawn> = population
        .histories()
        .map(|(id, events)| {
            let columns: BTreeMap<&str, String> =
                COLUMNS.into_iter().zip(row(id, events)).collect();
            let own = verdicts.get(id.as_str()).cloned().unwrap_or_default();
            let has = |attribute: &str| match attribute {
                "emergency" => columns["emergency"] == "true",
                "cab_required" => columns["cab_required"] == "true",
                "rejected" => events
                    .iter()
                    .any(|(_, e)| matches!(e, DeploymentEvent::DeploymentRejected(_))),
                "rolled_back" => !columns["rolled_back_at"].is_empty(),
                "failed" => own.contains(&FAIL),
                "open" => own.contains(&OPEN),
                _ => false,
            };
            let weight: f64 = plan
                .weights
                .iter()
                .filter(|(attribute, _)| has(attribute))
                .map(|(_, w)| *w)
                .product();
            Drawn {
                id,
                key: uniform(&plan.seed, id).ln() / weight,
                weight,
                events,
            }
        })
        .collect();
    drawn.sort_by(|a, b| b.key.total_cmp(&a.key).then(a.id.cmp(b.id)));
    drawn.truncate(plan.size);
    Ok(drawn)
}

/// The sample as a Markdown workpaper: how it was drawn, then each change's whole trail.
pub fn workpaper(scope: &str, plan: &Plan, total: usize, drawn: &[Drawn]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Sample of {scope}\n");
    let weights: Vec<String> = plan
        .weights
        .iter()
        .map(|(a, w)| format!("{a}={w}"))
        .collect();
    let _ = writeln!(
        out,
        "{} of {total} changes, seed `{}`, weights {}. Each change's key is ln(u) / w, with u from \
         the first 8 bytes of SHA-256(\"SEED:ID\") and w the product of its attributes' weights; \
         the sample is the largest keys (docs/evidence.md, \"Sampling\").\n",
        drawn.len(),
        plan.seed,
        if weights.is_empty() {
            "none".to_string()
        } else {
            weights.join(", ")
        }
    );
    for (n, change) in drawn.iter().enumerate() {
        let columns: BTreeMap<&str, String> = COLUMNS
            .into_iter()
            .zip(row(change.id, change.events))
            .collect();
        let reference = if columns["change_ref"].is_empty() {
            String::new()
        } else {
            format!(" ({})", columns["change_ref"])
        };
        let _ = writeln!(
            out,
            "## {}. {} {}{reference}\n\nChange `{}`, requested by {} at {}; outcome {}; key {:.6}, \
             weight {}.\n",
            n + 1,
            columns["app_name"],
            columns["version"],
            change.id,
            columns["requester"],
            columns["requested_at"],
            columns["outcome"],
            change.key,
            change.weight
        );
        for (k, (index, event)) in change.events.iter().enumerate() {
            let _ = writeln!(
                out,
                "- leaf {index}: `{}`",
                event_line(k as i64 + 1, event).replace('`', "'")
            );
        }
        let _ = writeln!(out, "\nAuditor's notes:\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u_is_the_first_eight_bytes_of_the_digest_as_a_fraction() {
        // The first 8 bytes of SHA-256("s:x"), big-endian, over 2^64.
        let digest = Sha256::digest(b"s:x");
        let n = u64::from_be_bytes(digest[..8].try_into().unwrap());
        assert_eq!(uniform("s", "x"), (n as f64 + 0.5) / 2f64.powi(64));
        assert!(uniform("s", "x") > 0.0 && uniform("s", "x") < 1.0);
        assert_ne!(
            uniform("s", "x"),
            uniform("t", "x"),
            "the seed changes the draw"
        );
    }

    #[test]
    fn weights_name_a_known_attribute_and_a_positive_number() {
        assert_eq!(parse_weight("emergency=3"), Ok(("emergency".into(), 3.0)));
        for bad in [
            "emergency",
            "urgent=2",
            "emergency=0",
            "emergency=-1",
            "emergency=x",
        ] {
            assert!(parse_weight(bad).is_err(), "{bad}");
        }
    }
}
