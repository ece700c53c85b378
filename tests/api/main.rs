//! Integration tests: the store contract and the real `eucora` binary over HTTP, each test
//! generated once per backend (SQLite and PostgreSQL) from one body.

mod helpers;

mod access;
mod anchors;
mod bad_input;
mod cli;
mod concurrency;
mod connections;
mod connector_sim;
mod console;
mod contract;
mod cost;
mod crash;
mod dispatch;
mod docs;
mod evidence;
mod forecast;
mod fresh;
mod fuzz;
mod global_stream;
mod governance;
mod idempotency;
mod lifecycle;
mod log;
mod metrics;
mod observability;
mod outage;
mod principals;
mod readme;
mod replay;
mod rules;
mod runner;
mod store_contract;
mod traces;
mod unreadable;
mod upcasting;
