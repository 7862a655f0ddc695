//! Observability: Prometheus metrics (one registry, typed metric structs) and the admin HTTP
//! endpoints (`/metrics`, `/healthz`, `/readyz`).

pub mod admin;
pub mod metrics;
