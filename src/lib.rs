//! EUCORA, an event-sourced deployment control plane.
//!
//! - [`domain`]: commands, the `DeploymentIntent` aggregate, the risk model and gate policy.
//! - [`store`]: the event store on SQLite or PostgreSQL behind cqrs-es, principals, idempotency.
//! - [`http`]: the axum API, its errors (problem+json) and its OpenAPI document.
//! - [`projector`]: the projection runner that feeds the global stream to the metrics fold.
//! - [`replay`]: `eucora replay`, the rebuild from position 0 and the integrity check.
//! - [`app`]: wiring: builds the store, the command bus and the server from a [`config::Config`].
//! - [`telemetry`]: process metrics through OpenTelemetry and opentelemetry-prometheus.
//! - [`demo`]: `eucora demo`, seeded traffic through the real API for dashboards and alerts.
//! - [`config`]: the command line and `EUCORA_*` environment.

pub mod app;
pub mod config;
pub mod demo;
pub mod domain;
pub mod http;
pub mod projector;
pub mod replay;
pub mod store;
pub mod telemetry;
