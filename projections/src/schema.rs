//! The JSON Schema of every stored event, from the Rust types: what `docs/events.md` and
//! `GET /api/v1/schemas/events` show, so neither can drift from the code.

use serde_json::Value;

use crate::access::AccessEvent;
use crate::event::DeploymentEvent;
use crate::governance::GovernanceEvent;

/// `{"deployment": …, "access": …, "governance": …}`: the JSON Schema (2020-12) of a deployment
/// intent's events, of a principal's, and of the policy stream's and refused commands', each a
/// `oneOf` whose members name the event type.
pub fn events_schema() -> Value {
    serde_json::json!({
        "deployment": schemars::schema_for!(DeploymentEvent),
        "access": schemars::schema_for!(AccessEvent),
        "governance": schemars::schema_for!(GovernanceEvent),
    })
}

/// `docs/events.md`: every event type with its current version, and every type its payloads use
/// with every field's type and meaning, rendered from [`events_schema`].
pub fn events_markdown() -> String {
    let schema = events_schema();
    let mut out = String::from(
        "# Events\n\n\
         Generated from the Rust types (`eucora_projections::schema`; a test fails when this file\n\
         and the types differ, and `EUCORA_WRITE_DOCS=1 cargo test -p eucora-projections schema`\n\
         writes it again); `GET /api/v1/schemas/events` serves the JSON Schema it is rendered from.\n\
         Every event is stored as its payload (the JSON object below, under its type's name's\n\
         member: `{\"DeploymentCreated\": {…}}`), with its type name and version in their own\n\
         columns (docs/evidence.md, \"Leaves\"). An older version is read through its upcasters\n\
         (docs/architecture.md, \"Events\"), so every stored event reads as the version here.\n\
         A field marked *null allowed* is always written, as null when it has no value.\n",
    );
    for (stream, title) in [
        ("deployment", "A deployment intent's stream"),
        ("access", "A principal's stream"),
        (
            "governance",
            "The policy stream (aggregate type `policy`) and refused commands (aggregate type \
             `access`, one stream each)",
        ),
    ] {
        let root = &schema[stream];
        out.push_str(&format!(
            "\n## {title}\n\n| event type | version | payload |\n|---|---:|---|\n"
        ));
        for member in root["oneOf"].as_array().into_iter().flatten() {
            let Some((name, payload)) = member["properties"]
                .as_object()
                .and_then(|p| p.iter().next())
            else {
                continue;
            };
            let version = crate::decode::current_version(name)
                .map_or_else(|| "?".to_string(), |v| v.to_string());
            out.push_str(&format!(
                "| `{name}` | {version} | {} |\n",
                type_of(payload)
            ));
        }
    }
    // Every named type, once, in name order.
    let mut defs: Vec<(&String, &Value)> = Vec::new();
    for stream in ["deployment", "access", "governance"] {
        for (name, def) in schema[stream]["$defs"].as_object().into_iter().flatten() {
            if !defs.iter().any(|(n, _)| *n == name) {
                defs.push((name, def));
            }
        }
    }
    defs.sort_by(|a, b| a.0.cmp(b.0));
    out.push_str("\n## Types\n");
    for (name, def) in defs {
        out.push_str(&format!("\n### {name}\n\n"));
        if let Some(text) = def["description"].as_str() {
            out.push_str(&one_paragraph(text));
            out.push_str("\n\n");
        }
        if let Some(values) = def["enum"].as_array() {
            let values: Vec<String> = values.iter().map(|v| format!("`{}`", plain(v))).collect();
            out.push_str(&format!("One of {}.\n", values.join(", ")));
            continue;
        }
        if let Some(variants) = def["oneOf"].as_array() {
            out.push_str("One of:\n\n");
            for v in variants {
                let value = v["const"]
                    .as_str()
                    .map(String::from)
                    .or_else(|| v["enum"].get(0).map(plain))
                    .unwrap_or_else(|| type_of(v));
                let meaning = v["description"]
                    .as_str()
                    .map(one_paragraph)
                    .unwrap_or_default();
                out.push_str(&format!("- `{value}`: {meaning}\n"));
            }
            continue;
        }
        let required: Vec<&str> = def["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let properties = def["properties"].as_object();
        if properties.is_none_or(|p| p.is_empty()) {
            out.push_str(&format!("{}.\n", type_of(def)));
            continue;
        }
        out.push_str("| field | type | meaning |\n|---|---|---|\n");
        for (field, property) in properties.into_iter().flatten() {
            let mut kind = type_of(property);
            if !required.contains(&field.as_str()) {
                kind.push_str(", null allowed");
            }
            let meaning = property["description"]
                .as_str()
                .map(one_paragraph)
                .unwrap_or_default();
            out.push_str(&format!("| `{field}` | {kind} | {meaning} |\n"));
        }
    }
    out
}

/// A JSON value as it is written in the stored JSON, without quotes for a string.
fn plain(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), String::from)
}

/// A doc comment's text on one line (for a table cell).
fn one_paragraph(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// A schema's type, in words: a link for a named type, `X or null`, `array of X`, a format.
fn type_of(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("[{name}](#{})", name.to_lowercase());
    }
    if let Some(any) = schema["anyOf"].as_array().or(schema["oneOf"].as_array()) {
        let parts: Vec<String> = any.iter().map(type_of).collect();
        return parts.join(" or ");
    }
    let base = |t: &str| -> String {
        match t {
            "array" => format!("array of {}", type_of(&schema["items"])),
            "object" if schema["additionalProperties"].is_object() => {
                format!("map to {}", type_of(&schema["additionalProperties"]))
            }
            "string" => match schema["format"].as_str() {
                Some("date-time") => "RFC 3339 time".into(),
                Some("uuid") => "UUID".into(),
                _ => "string".into(),
            },
            "integer" => match schema["minimum"].as_f64() {
                Some(m) if m >= 0.0 => "integer ≥ 0".into(),
                _ => "integer".into(),
            },
            other => other.into(),
        }
    };
    match &schema["type"] {
        Value::String(t) => base(t),
        Value::Array(ts) => {
            let parts: Vec<String> = ts.iter().filter_map(Value::as_str).map(base).collect();
            parts.join(" or ")
        }
        _ => "any JSON".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/events.md is what the types say; with `EUCORA_WRITE_DOCS` set, it is written first.
    #[test]
    fn docs_events_md_is_what_the_event_types_say() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events.md");
        let text = events_markdown();
        if std::env::var_os("EUCORA_WRITE_DOCS").is_some() {
            std::fs::write(path, &text).expect("docs/events.md is writable");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == text,
            "docs/events.md differs from the event types: write it again with \
             EUCORA_WRITE_DOCS=1 cargo test -p eucora-projections schema"
        );
    }

    #[test]
    fn every_event_type_is_in_the_schema_with_its_version() {
        let text = events_markdown();
        for name in [
            "DeploymentCreated",
            "DeploymentDriftDetected",
            "PrincipalCreated",
            "PrincipalRevoked",
        ] {
            let version = crate::decode::current_version(name).unwrap();
            assert!(
                text.contains(&format!("| `{name}` | {version} |")),
                "{name}"
            );
        }
    }
}
