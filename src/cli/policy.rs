//! `eucora policy history|show|diff`: which rules were in force, read from a running server's
//! policy stream (`GET /api/v1/policies`), as an auditor or admin.

use reqwest::Method;
use serde_json::Value;

use super::client::Client;
use super::{say, table, Failure};
use crate::config::{ClientArgs, PolicyCommand};

pub async fn run(command: PolicyCommand, args: &ClientArgs) -> Result<(), Failure> {
    let client = Client::new(args)?;
    match command {
        PolicyCommand::History => {
            let list = client
                .ok(Method::GET, "/api/v1/policies", &[], None)
                .await?;
            if args.json {
                return say(format_args!("{list}"));
            }
            let rows: Vec<Vec<String>> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    vec![
                        short(&p["digest"]),
                        text(&p["activated_at"]),
                        text(&p["activated_by"]),
                        text(&p["source"]),
                        short(&p["previous_digest"]),
                    ]
                })
                .collect();
            for line in table::render(&["DIGEST", "ACTIVATED", "BY", "SOURCE", "REPLACED"], &rows) {
                say(format_args!("{line}"))?;
            }
            Ok(())
        }
        PolicyCommand::Show { digest } => {
            let p = fetch(&client, &digest).await?;
            if args.json {
                return say(format_args!("{p}"));
            }
            say(format_args!("digest:       {}", text(&p["digest"])))?;
            say(format_args!("activated:    {}", text(&p["activated_at"])))?;
            say(format_args!("by:           {}", text(&p["activated_by"])))?;
            say(format_args!("source:       {}", text(&p["source"])))?;
            say(format_args!(
                "replaced:     {}",
                text(&p["previous_digest"])
            ))?;
            say(format_args!(""))?;
            let policy = p["policy"].as_str().unwrap_or_default();
            if policy.is_empty() {
                return say(format_args!(
                    "(empty: the built-in default rules, docs/rules.md)"
                ));
            }
            for line in policy.lines() {
                say(format_args!("{line}"))?;
            }
            Ok(())
        }
        PolicyCommand::Diff { from, to } => {
            let (a, b) = (fetch(&client, &from).await?, fetch(&client, &to).await?);
            let (old, new) = (
                a["policy"].as_str().unwrap_or_default(),
                b["policy"].as_str().unwrap_or_default(),
            );
            let diff = similar::TextDiff::from_lines(old, new);
            let unified = diff
                .unified_diff()
                .context_radius(3)
                .header(&short(&a["digest"]), &short(&b["digest"]))
                .to_string();
            if unified.is_empty() {
                return say(format_args!("the two policies' texts are the same"));
            }
            for line in unified.lines() {
                say(format_args!("{line}"))?;
            }
            Ok(())
        }
    }
}

/// `GET /api/v1/policies/{digest}`, after checking the digest looks like one.
async fn fetch(client: &Client, digest: &str) -> Result<Value, Failure> {
    if digest.len() < 8 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{digest:?} is not a policy digest: 8 to 64 hex digits").into());
    }
    client
        .ok(
            Method::GET,
            &format!("/api/v1/policies/{digest}"),
            &[],
            None,
        )
        .await
}

/// The first 12 hex digits of a digest, or `-`.
fn short(v: &Value) -> String {
    v.as_str()
        .map_or_else(|| "-".to_string(), |d| d.chars().take(12).collect())
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| "-".to_string(), str::to_string)
}
