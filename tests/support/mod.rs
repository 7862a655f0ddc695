//! The real-peer harness (STYLE.md, tests level 5): the built `trunkline run` between sipp as the
//! carrier and sipp as the agent runtime, all on 127.0.0.0/8, every process bounded in time.
//!
//! - [`apiserver`]: an in-memory Kubernetes API server for `trunkline operator` and `gateway`;
//! - [`process`]: a `trunkline` child process: SIGTERM, exit, stopped and its log printed on drop;
//! - [`net`]: temp dirs removed on drop, free ports, a raw HTTP GET, raw UDP datagrams;
//! - [`specs`]: a specs folder per test ([`Specs`], [`Trunk`]), rewritten atomically while the
//!   gateway runs;
//! - [`gateway`]: [`Gateway::start`] spawns the binary on free ports and waits for `/readyz`;
//! - [`sipp`]: [`sipp::uac`] places calls and waits, [`sipp::uas`] starts an agent runtime;
//!   scenarios live in `tests/sipp/` (their headers say what each one checks);
//! - [`kamailio`]: a TLS front for sipp (Debian's sipp has no TLS);
//! - [`linphone`]: linphonec as a carrier that answers SHA-256 digest challenges;
//! - [`carrier`]: a carrier driven by hand over UDP that sends and checks RTP itself;
//! - [`records`]: the session records a gateway wrote, checked against their JSON Schema;
//! - [`promql`]: the metric names a PromQL query selects, and those the binaries export;
//! - [`ca`]: a test CA that signs the certificates of TLS peers (`--tls-ca`);
//! - [`digest`]: recomputes a client's digest answer, to prove what it sent.
//!
//! A test file uses it with `mod support;`. Whatever a test leaves behind is killed or removed on
//! drop; when a test panics, the gateway's log and every sipp trace are printed.

// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports)]
// Harness code is test code: a failed set-up panics with what went wrong (STYLE.md allows panic,
// unwrap and expect in tests; clippy only knows #[test] functions as tests).
#![allow(clippy::panic, clippy::unwrap_used)]

pub mod apiserver;
pub mod ca;
pub mod carrier;
pub mod digest;
pub mod gateway;
pub mod kamailio;
pub mod linphone;
pub mod net;
pub mod process;
pub mod promql;
pub mod records;
pub mod sipp;
pub mod specs;

pub use gateway::{Gateway, GatewayOptions};
pub use net::{TempDir, free_port};
pub use specs::{AgentHeader, Outbound, Specs, Trunk};
