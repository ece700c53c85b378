//! An event's metadata: the JSON object of strings stored beside its payload (and hashed into the
//! Merkle log like every column), and the members EUCORA writes into it.

use std::collections::HashMap;

/// The metadata member that holds the digest of the `Idempotency-Key` an event was written under.
pub const IDEMPOTENCY_METADATA: &str = "idempotency_key";
/// The metadata member that holds the W3C trace id of the request (or work) that wrote an event,
/// when its trace was sampled: from an event to its trace.
pub const TRACE_METADATA: &str = "trace_id";
/// The metadata member that holds the W3C `traceparent` of the command that wrote an event, so
/// that work the event asks for later (a connector action) continues the command's trace.
pub const TRACEPARENT_METADATA: &str = "traceparent";

/// An event's metadata: the idempotency key's digest, if any, and the current trace id, if any.
pub fn event_metadata(key_digest: Option<&str>) -> HashMap<String, String> {
    let mut metadata = HashMap::new();
    if let Some(key) = key_digest {
        metadata.insert(IDEMPOTENCY_METADATA.to_string(), key.to_string());
    }
    if let Some((trace, parent)) = crate::trace::trace_context() {
        metadata.insert(TRACE_METADATA.to_string(), trace);
        metadata.insert(TRACEPARENT_METADATA.to_string(), parent);
    }
    metadata
}

/// The string member `key` of an event's stored metadata, if it has one.
pub fn metadata_member(metadata: &str, key: &str) -> Option<String> {
    let metadata: HashMap<String, serde_json::Value> = serde_json::from_str(metadata).ok()?;
    Some(metadata.get(key)?.as_str()?.to_string())
}
