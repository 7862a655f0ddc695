//! Observability: Prometheus metrics (one registry, typed metric structs), the admin HTTP
//! endpoints (`/metrics`, `/healthz`, `/readyz`) and the call API (`/v1/calls`).

pub mod admin;
pub mod api;
pub mod metrics;
pub mod record;
