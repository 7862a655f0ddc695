//! Observability: Prometheus metrics (one registry, typed metric structs), the admin HTTP
//! endpoints (`/metrics`, `/healthz`, `/readyz`), the call API (`/v1/calls`), the session
//! record and its file sink (`record`), and the on-disk spool that session records wait in for
//! the webhook (`spool`).

pub mod admin;
pub mod api;
pub mod metrics;
pub mod record;
pub mod spool;
pub mod webhook;
