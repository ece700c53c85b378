//! EUCORA, an event-sourced deployment control plane.
//!
//! - [`domain`]: commands, the `DeploymentIntent` aggregate, the risk model and gate policy.
//! - [`store`]: everything kept, on SQLite or PostgreSQL, split by concern; all SQL lives there.
//! - [`write`]: the write side: commands through cqrs-es and the aggregate.
//! - [`read`]: what the API's reads are served from.
//! - [`deadlines`]: records emergency changes whose retrospective approval is overdue.
//! - [`projection`]: the one projection runner and the projections it feeds (metrics, intent read
//!   model, the Merkle log).
//! - [`replay`]: `eucora replay`: the same runner from position 0, with the integrity check.
//! - [`checkpoints`]: the log's signing key, signed checkpoints, and the integrity status.
//! - [`evidence`]: the compliance evidence bundle, its controls, and the offline verifier.
//! - [`principals`]: bearer-token principals and how tokens are issued.
//! - [`governance`]: the policy in force and refused commands, recorded as events.
//! - [`http`]: the axum API, its state, errors (problem+json) and OpenAPI document.
//! - [`app`]: wiring only: builds all of the above from [`config::ServeArgs`] and runs it.
//! - [`telemetry`]: the tracing subscriber (logs, OpenTelemetry spans) and process metrics through
//!   OpenTelemetry and opentelemetry-prometheus.
//! - [`trace`]: the W3C trace context in and out (a floor: it names no other module).
//! - [`slo`], [`forecast`]: the Prometheus SLO rules and predictive alerts, generated from the
//!   policy with their promtool tests.
//! - [`demo`]: `eucora demo`, seeded traffic through the real API for dashboards and alerts.
//! - [`config`]: the command line and `EUCORA_*` environment.
//! - [`connector`]: the connector protocol, and `eucora connector-sim`, a connector that speaks
//!   it over a simulated device population.
//! - [`cli`]: what the commands share (output, exit statuses, event lines) and the operator's
//!   client commands (`eucora deployments …`).

pub mod app;
pub mod checkpoints;
pub mod cli;
pub mod config;
pub mod connector;
pub mod deadlines;
pub mod demo;
pub mod domain;
pub mod evidence;
pub mod forecast;
pub mod governance;
pub mod http;
pub mod principals;
pub mod projection;
pub mod read;
pub mod replay;
pub mod slo;
pub mod store;
pub mod telemetry;
pub mod trace;
pub mod ui;
pub mod write;
