//! trunkline: SIP trunks as Kubernetes resources.
pub mod api;
pub mod config;
