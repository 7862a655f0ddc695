//! The subcommands. Each one is glue: it parses flags, calls the library, prints.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::explain::PublicAddress;
use trunkline::api::{Kind, Transport};
use trunkline::config::check::CheckReport;
use trunkline::config::lookup::{self, CallAttempt, LookupOptions, Outcome};
use trunkline::config::{CompileOptions, State, compile, yaml};
use trunkline::runtime::gateway::{NodeAddressOptions, ServeOptions, SpecSource, serve};
use trunkline::runtime::operator::OperatorOptions;
use trunkline::sip::transport::ListenAddr;
use trunkline::source::folder::load_paths;
use trunkline::source::kube::KubeSourceOptions;
use trunkline::source::node::{DEFAULT_ADDRESS_ANNOTATION, Retry};

/// SIP trunks as Kubernetes resources: an operator, a SIP/RTP gateway, and the offline tools for
/// the git side of the workflow.
#[derive(Debug, Parser)]
#[command(name = "trunkline", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How `run`, `gateway` and `operator` write their log: `text` for people, `json` for log
    /// collectors (one object per line: timestamp, level, target, fields). RUST_LOG picks what
    /// is logged (default `info`).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value_t = LogFormat::Text,
        env = "TRUNKLINE_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

impl Cli {
    /// This process's command line; exits with clap's message when it is wrong.
    pub fn from_env() -> Cli {
        Cli::checked(Cli::command().get_matches()).unwrap_or_else(|e| e.exit())
    }

    /// [`Cli::from_env`] on `args`, without exiting.
    #[cfg(test)]
    fn checked_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::checked(Cli::command().try_get_matches_from(args)?)
    }

    /// The checks clap cannot express: `--public-address` and `--public-address-node` conflict
    /// when both are flags, but a node name from `NODE_NAME` yields to `--public-address` (a pod
    /// may have NODE_NAME set whatever its flags).
    fn checked(matches: ArgMatches) -> Result<Cli, clap::Error> {
        let mut cli = Cli::from_arg_matches(&matches)?;
        if let (Command::Gateway(args), Some(("gateway", sub))) =
            (&mut cli.command, matches.subcommand())
            && args.serve.public_address.is_some()
            && args.public_address_node.is_some()
        {
            if sub.value_source("public_address_node") == Some(ValueSource::CommandLine) {
                return Err(Cli::command().error(
                    ErrorKind::ArgumentConflict,
                    "--public-address and --public-address-node cannot be used together",
                ));
            }
            args.public_address_node = None;
        }
        Ok(cli)
    }
}

/// The log's form (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve calls from a folder of specs: the SIP gateway on one machine, no Kubernetes.
    #[command(args_override_self = true)]
    Run(Box<RunArgs>),
    /// Serve calls from the resources in the cluster: the command of the gateway pods the
    /// operator runs. Watches InboundTrunks, OutboundTrunks and TransferDestinations and the
    /// operator's credentials Secret, compiles on every change, swaps the table in while calls go
    /// on, and reports the hash of the config it runs on its admin endpoint (`GET /v1/status`,
    /// read by the operator); it never writes to the API server. Not ready until the first
    /// config; keeps its last table when
    /// the API server goes away. Connects with the pod's in-cluster configuration, or with a
    /// kubeconfig when one is found (KUBECONFIG, ~/.kube/config).
    #[command(args_override_self = true)]
    Gateway(Box<GatewayArgs>),
    /// Make the resources live in a cluster: writes every object's status (Accepted,
    /// ResolvedRefs, Programmed), generates inbound credentials, keeps the gateways' credentials
    /// Secret, and runs the gateway fleet (Deployment or DaemonSet, RBAC, Services, PDB) from its
    /// settings file. Replicas elect a leader on a Lease; only the leader writes. Serves
    /// /metrics, /healthz and /readyz on --admin. Connects with the pod's in-cluster
    /// configuration, or with a kubeconfig (KUBECONFIG, ~/.kube/config).
    #[command(args_override_self = true)]
    Operator(Box<OperatorArgs>),
    /// Print the CustomResourceDefinitions of the three kinds as YAML.
    Crds {
        /// Write one file per kind into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Validate spec files as CI would before merge: schema (the CRDs' OpenAPI and CEL rules),
    /// references and cross-object rules. Prints a verdict per object and every problem with its
    /// file, object and field path. Exit status: 0 when nothing is refused, 1 otherwise.
    Check {
        /// Files or folders (every *.yaml and *.yml under them, recursively).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Also fail (exit 1) when an object is degraded, e.g. holds a conflicting number.
        #[arg(long)]
        strict: bool,
        /// Compile as the fleet of this region would (trunks of other regions left out).
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
        /// `text` for people, `json` for CI tools.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Explain what the gateway would do with a call: runs compile and the gateway's own matcher
    /// offline and prints the decision chain, ending in the SIP answer. Exit status: 0 when the
    /// call would reach an agent, 1 when it would be refused or challenged. With `--outbound`:
    /// an agent's call out through an OutboundTrunk, and the first lines of the INVITE the
    /// carrier would get; 0 when it would go out, 1 when the agent would be refused. With
    /// `--transfer`: an agent's REFER on a call, the destination it names and what would be
    /// dialed; 0 when the transfer would be carried out, 1 when it would be refused.
    Explain(Box<ExplainArgs>),
}

/// Flags of `trunkline explain` (inbound calls by default, `--outbound` for an agent's call out,
/// `--transfer` for an agent's transfer).
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("agent_side").args(["outbound", "transfer"])))]
struct ExplainArgs {
    /// The spec folder (or files) the gateway serves.
    #[arg(long = "specs", required = true, value_name = "PATH")]
    specs: Vec<PathBuf>,
    /// The carrier's source address, `IP` or `IP:PORT` (inbound calls).
    #[arg(long, value_name = "IP[:PORT]", required_unless_present = "agent_side")]
    from: Option<String>,
    /// The dialed number as the carrier sends it (`+14155550100`, `0014155550100`,
    /// `tel:+1-415-555-0100`) or a whole Request-URI (`sip:+14155550100@gw;user=phone`).
    /// With `--outbound`: the number the agent dials (the user of its Request-URI), or its whole
    /// Request-URI (`sip:+14155550142@gw;trunk=carrier-out`). With `--transfer`: what the agent
    /// puts in Refer-To: a destination's name (`sales-desk`, `<sip:sales-desk@any-host>`), its
    /// number (`tel:+14155550199`) or its SIP URI.
    #[arg(long, value_name = "NUMBER|URI")]
    to: String,
    /// The transport the INVITE arrives on (inbound calls).
    #[arg(long, value_enum, default_value_t = TransportFlag(Transport::Udp), conflicts_with = "agent_side")]
    transport: TransportFlag,
    /// The digest username the INVITE carries (its response is assumed valid). Omit to see
    /// what happens to an INVITE without credentials (inbound calls).
    #[arg(long, value_name = "USERNAME", conflicts_with = "agent_side")]
    user: Option<String>,
    /// The caller's number or From URI (inbound calls; `--caller-id` with `--outbound`).
    #[arg(long, value_name = "NUMBER|URI", default_value = "", conflicts_with = "agent_side")]
    caller: String,
    /// The INVITE comes from the registrar that this OutboundTrunk's live registration
    /// reached (`namespace/NAME`): it may be a call the registration delivers (inbound calls).
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "agent_side")]
    registered: Option<String>,
    /// A header of the INVITE, `Name: value`; repeatable. With `--outbound`, a header of the
    /// agent's INVITE (its `X-*` headers reach the carrier).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", conflicts_with = "transfer")]
    headers: Vec<String>,
    /// Explain an outbound call: the agent runtime's INVITE to the agent-facing listener,
    /// naming the trunk, the number and the agent.
    #[arg(long)]
    outbound: bool,
    /// Explain a transfer: an agent's REFER on a call of `--trunk`, naming `--to`.
    #[arg(long)]
    transfer: bool,
    /// The OutboundTrunk the agent names (its trunk header), `NAME` or `namespace/NAME`. With
    /// `--transfer`: the call's trunk (an InboundTrunk or an OutboundTrunk), whose namespace
    /// holds the destinations.
    #[arg(long, value_name = "NAME", requires = "agent_side")]
    trunk: Option<String>,
    /// The agent id the agent's INVITE carries (its agent id header). With `--transfer`: the
    /// call's agent.
    #[arg(long, value_name = "ID", requires = "agent_side")]
    agent: Option<String>,
    /// The caller id the agent asks for (the From user of its INVITE); omit for the trunk's
    /// `callerId`.
    #[arg(long, value_name = "NUMBER", requires = "outbound")]
    caller_id: Option<String>,
    /// The gateway's carrier-facing address, shown in the carrier's INVITE (Via, Contact,
    /// From, P-Asserted-Identity): the gateway's `--public-address` or listener, `IP` or
    /// `IP:PORT` (port default 5060, 5061 for a TLS trunk). Omitted: a placeholder.
    #[arg(long, value_name = "IP[:PORT]", requires = "outbound", value_parser = parse_public_address)]
    public_address: Option<PublicAddress>,
    /// Compile as the fleet of this region would.
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// Prefix of trunkline's own headers.
    #[arg(long, default_value = lookup::DEFAULT_HEADER_PREFIX)]
    header_prefix: String,
    /// `text` for people, `json` for tools.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Flags of `trunkline run`.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Spec folders or files (InboundTrunk, OutboundTrunk, TransferDestination, basic-auth
    /// Secrets); watched: edits are compiled and swapped in while calls go on.
    #[arg(long = "specs", required = true, value_name = "PATH")]
    specs: Vec<PathBuf>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Folder for state that must survive restarts: generated trunk credentials and the
    /// digest nonce key.
    #[arg(long, value_name = "DIR", default_value = ".trunkline")]
    state_dir: PathBuf,
}

/// Flags of `trunkline gateway`.
#[derive(Debug, clap::Args)]
struct GatewayArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// The Secret the operator keeps with the credentials of every served trunk and the shared
    /// digest nonce key, in the pod's namespace. The gateway is not ready until it exists.
    #[arg(long, value_name = "NAME", default_value = "trunkline-gateway-credentials")]
    credentials_secret: String,
    /// This pod's namespace: where the credentials Secret is read.
    /// Default: the namespace of the pod's service account (or of the kubeconfig context).
    #[arg(long, value_name = "NAMESPACE", env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Watch InboundTrunks, OutboundTrunks and TransferDestinations in this namespace only.
    /// Default: every namespace.
    #[arg(long, value_name = "NAMESPACE")]
    watch_namespace: Option<String>,
    /// Advertise this Node's address (in Via, Contact and SDP, as --public-address would):
    /// the value of its --node-address-annotation, else its first ExternalIP, else its first
    /// InternalIP. Read once at start, retried for up to 60 s (not ready meanwhile). For fleets
    /// on the host network: the fleet passes its pod's spec.nodeName. Needs RBAC `get` on
    /// `nodes`.
    /// Conflicts with --public-address; NODE_NAME from the environment yields to it.
    #[arg(long, value_name = "NODE", env = "NODE_NAME")]
    public_address_node: Option<String>,
    /// The Node annotation that, when set, holds the address to advertise (an IP); for nodes
    /// whose public address is not in their status (NAT, elastic IPs).
    #[arg(long, value_name = "KEY", default_value = DEFAULT_ADDRESS_ANNOTATION)]
    node_address_annotation: String,
}

/// The flags of `operator`.
#[derive(Debug, clap::Args)]
struct OperatorArgs {
    /// The operator's settings (the gateway fleet: image, mode, ports, Services, region, ...),
    /// YAML; the Helm chart writes it. Every key is optional. Default: the built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Admin HTTP address: /metrics, /healthz, /readyz.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:8080")]
    admin: SocketAddr,
    /// The Lease the replicas elect a leader on. Default: `<fleet name>-operator`.
    #[arg(long, value_name = "NAME")]
    lease_name: Option<String>,
    /// This replica's name in the Lease. Default: the host name.
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    pod_name: Option<String>,
    /// The namespace of the Lease (the operator's own). Default: the fleet's namespace.
    #[arg(long, value_name = "NAMESPACE", env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Watch InboundTrunks, OutboundTrunks, TransferDestinations and Secrets in this namespace
    /// only. Default: every namespace.
    #[arg(long, value_name = "NAMESPACE")]
    watch_namespace: Option<String>,
    /// How long a leader holds the Lease without renewing it: the longest a failed leader's
    /// successor waits.
    #[arg(long, value_name = "SECS", default_value = "15", value_parser = parse_seconds)]
    lease_duration: Duration,
}

/// The flags `run` and `gateway` share: listeners, media, SIP behaviour, drain.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Carrier-facing listener, `udp://IP:PORT`, `tcp://IP:PORT` or `tls://IP:PORT`;
    /// repeatable. Default: udp://0.0.0.0:5060 and tcp://0.0.0.0:5060.
    #[arg(long = "listen", value_name = "PROTO://IP:PORT")]
    listen: Vec<ListenAddr>,
    /// Agent-facing (internal) listener, same form; repeatable. The gateway sends the agent
    /// runtime its INVITEs from here. Default: udp://127.0.0.1:5080 and tcp://127.0.0.1:5080.
    #[arg(long = "internal-listen", value_name = "PROTO://IP:PORT")]
    internal_listen: Vec<ListenAddr>,
    /// PEM certificate chain for tls:// listeners (re-read when the file changes).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for tls:// listeners.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Admin HTTP address: /metrics, /healthz, /readyz, and /v1/status (the report the operator
    /// reads: in a pod, listen where the operator can reach it, such as the pod's IP). An IPv6
    /// address with or without brackets.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9090", value_parser = parse_admin)]
    admin: SocketAddr,
    /// The address carriers reach the gateway at, advertised in Via and Contact (and SDP)
    /// instead of the listener's own (behind NAT or a load balancer).
    #[arg(long, value_name = "IP")]
    public_address: Option<IpAddr>,
    /// UDP port range for RTP relays, LOW-HIGH (used by the media relay).
    #[arg(long, value_name = "LOW-HIGH", default_value = "20000-30000", value_parser = parse_port_range)]
    rtp_ports: (u16, u16),
    /// Prefix of trunkline's own headers (agent selection, session metadata).
    #[arg(long, default_value = lookup::DEFAULT_HEADER_PREFIX)]
    header_prefix: String,
    /// Serve only the trunks of this region (and those without regions).
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// Digest realm of the challenges.
    #[arg(long, default_value = "trunkline")]
    realm: String,
    /// Seconds an agent may ring before the call is given up (480 to the carrier); `60` or
    /// `60s`.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_seconds)]
    agent_timeout: Duration,
    /// Seconds a bridged transfer's destination may ring before the transfer fails (the agent
    /// hears 480 and keeps the caller); `30` or `30s`.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    transfer_timeout: Duration,
    /// Where session records go: a JSON-lines file (rotated to PATH.1 .. PATH.N by size and
    /// age), or `-` for stdout. One record per admitted call, written when it ends. None: no
    /// records.
    #[arg(long, value_name = "PATH")]
    records_file: Option<String>,
    /// Size at which the records file is rotated, in bytes.
    #[arg(long, value_name = "BYTES", default_value = "104857600")]
    records_max_bytes: u64,
    /// Age at which the records file is rotated (from when this process started writing it);
    /// `0`: by size only. `86400` or `86400s`.
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_seconds)]
    records_max_age: Duration,
    /// Rotated records files kept (PATH.1 newest .. PATH.N oldest); older ones are deleted.
    #[arg(long, value_name = "N", default_value = "5")]
    records_keep: u32,
    /// Also write an `answered` record (kind `answered`, its own record id) to the records file
    /// as soon as a call is answered; the final record follows when it ends.
    #[arg(long)]
    records_file_answered: bool,
    /// Also send the `answered` record of each call to the webhook.
    #[arg(long)]
    records_webhook_answered: bool,
    /// POST every session record to this `http://` or `https://` URL (through the on-disk
    /// spool: nothing is lost while it is down; retried with backoff; `Idempotency-Key` is the
    /// record id). HTTPS checks the certificate against the URL's host (a name or an IP).
    #[arg(long, value_name = "URL")]
    records_webhook: Option<String>,
    /// PEM bundle of CA certificates trusted for an `https://` --records-webhook, beside the
    /// system's roots (a receiver with a private CA); read again when the file changes.
    #[arg(long, value_name = "FILE")]
    records_webhook_ca_file: Option<PathBuf>,
    /// A file holding the key of the webhook's `X-Trunkline-Signature: sha256=HMAC` header.
    #[arg(long, value_name = "FILE")]
    records_webhook_key_file: Option<PathBuf>,
    /// The spool directory records wait in for the webhook (one gateway per directory).
    #[arg(long, value_name = "DIR", default_value = "trunkline-records-spool")]
    records_spool: PathBuf,
    /// Take over the spools of gone gateways (with --records-webhook): the parent of
    /// --records-spool holds the spools of the fleet (one directory each, on a shared volume);
    /// at start and every 30 s, those whose lock is free have their records moved into this
    /// one (as far as its bound allows), then are removed.
    #[arg(long)]
    records_spool_adopt: bool,
    /// Bytes the spool holds at most; a full spool refuses new records (logged; the
    /// --records-file sink still gets them).
    #[arg(long, value_name = "BYTES", default_value = "1073741824")]
    records_spool_max_bytes: u64,
    /// Seconds without RTP from either side of an answered call (not on hold) before the
    /// gateway hangs it up, with the reason logged; `30` or `30s`.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    media_timeout: Duration,
    /// Seconds a call may stay on hold with the media timeout suspended; after that the media
    /// timeout applies again (a caller holding forever would keep relay ports forever). `0`:
    /// the whole hold.
    #[arg(long, value_name = "SECS", default_value = "3600", value_parser = parse_seconds)]
    max_hold: Duration,
    /// Seconds an answered call may last before the gateway hangs up both legs; a ceiling for
    /// the trunks' `limits.maxCallDurationSeconds`. `0`: no ceiling.
    #[arg(long, value_name = "SECS", default_value = "14400", value_parser = parse_seconds)]
    max_call_duration: Duration,
    /// The smallest session interval (RFC 4028 `Min-SE`) accepted from a peer that asks for
    /// session timers: a smaller `Session-Expires` gets 422. RFC 4028 says at least 90; lower
    /// only for tests.
    #[arg(long, value_name = "SECS", default_value = "90", value_parser = clap::value_parser!(u32).range(1..))]
    min_session_expires: u32,
    /// Seconds to let calls finish after SIGTERM before exiting (new calls get 503 meanwhile);
    /// `30` or `30s`.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    drain_timeout: Duration,
    /// Digest algorithms offered to carriers, one challenge each, in this order. Many deployed
    /// carriers read only the first challenge, so MD5 comes first by default; `SHA-256,MD5`
    /// prefers SHA-256 (RFC 8760), `SHA-256` alone refuses MD5.
    #[arg(long, value_delimiter = ',', default_value = "MD5,SHA-256", value_parser = parse_algorithm)]
    digest_algorithms: Vec<trunkline::sip::digest::Algorithm>,
    /// Seconds a digest nonce stays valid (then `stale=true`); `300` or `300s`.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_seconds)]
    nonce_ttl: Duration,
    /// Wrong answers one digest nonce takes; after them every answer with it is refused (403)
    /// and the carrier must ask for a new challenge.
    #[arg(long, value_name = "N", default_value = "3", value_parser = clap::value_parser!(u32).range(1..))]
    nonce_guesses: u32,
    /// New INVITEs per second one source address may send to the carrier-facing listener
    /// (bursts of twice that pass); over it they are dropped unanswered. 0: no limit.
    #[arg(long, value_name = "PER_SECOND", default_value = "50")]
    source_invite_rate: u32,
    /// OPTIONS per second one source address may send outside a dialog (bursts of twice that).
    #[arg(long, value_name = "PER_SECOND", default_value = "10")]
    source_options_rate: u32,
    /// Other out-of-dialog requests (REGISTER, BYE for no call...) and unreadable messages per
    /// second one source address gets an answer to (bursts of twice that).
    #[arg(long, value_name = "PER_SECOND", default_value = "10")]
    source_request_rate: u32,
    /// New out-of-dialog requests per second from all sources together that are not known-good
    /// (known-good: a call of theirs was routed in the last 24 h). 0: no limit.
    #[arg(long, value_name = "PER_SECOND", default_value = "2000")]
    global_request_rate: u32,
    /// Source addresses the per-source limits track at most (the least recently seen is
    /// forgotten first).
    #[arg(long, value_name = "N", default_value = "65536", value_parser = clap::value_parser!(u64).range(1..))]
    max_sources: u64,
    /// Refused digest answers from one address within --auth-failure-window that lock it out
    /// (its requests dropped unanswered for --auth-lockout). Known-good sources are never locked
    /// out. 0: no lockout.
    #[arg(long, value_name = "N", default_value = "5")]
    auth_failures: u32,
    /// The window refused digest answers are counted in; `60` or `60s`.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_seconds)]
    auth_failure_window: Duration,
    /// How long a locked-out address is ignored; `300` or `300s`.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_seconds)]
    auth_lockout: Duration,
    /// Refused answers for one username within --auth-failure-window, from any addresses, that
    /// put it under attack: then answers for it from addresses that are not known-good are
    /// verified at most at --username-attempt-rate. 0: never.
    #[arg(long, value_name = "N", default_value = "20")]
    username_failures: u32,
    /// Answers per second verified for a username under attack from addresses that are not
    /// known-good (the rest are dropped unanswered).
    #[arg(long, value_name = "PER_SECOND", default_value = "1")]
    username_attempt_rate: u32,
    /// At most one log line per refusal reason per this many seconds (with the count of the
    /// lines left out); `10` or `10s`.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    refusal_log_interval: Duration,
    /// Networks (CIDRs, comma-separated or repeated) the agent-facing listener takes new calls
    /// from (outbound calls, SIP or HTTP); a new INVITE from anywhere else gets 403.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.0/8,::1/128", value_name = "CIDR")]
    agent_networks: Vec<ipnet::IpNet>,
    /// The agent runtime's digest credentials: a file holding `USERNAME:PASSWORD` on its first
    /// line, or a directory with `username` and `password` files (a mounted basic-auth Secret).
    /// Its outbound INVITEs must then answer a challenge with them (read again on change).
    #[arg(long, value_name = "FILE")]
    agent_credentials: Option<PathBuf>,
    /// PEM bundle of CA certificates trusted for TLS toward carriers and agent runtimes, beside
    /// the system's roots.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Address of the call API (`POST /v1/calls`...); it is served only with
    /// `--api-token-file`.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9091", value_parser = parse_admin)]
    api: SocketAddr,
    /// File holding the bearer token of the call API (read again when the file changes); without
    /// it there is no API listener.
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// SIP URI of the agent runtime that calls started by the API are bridged to, unless the
    /// request names its own `agentUri`.
    #[arg(long, value_name = "URI")]
    agent_uri: Option<String>,
    /// TCP and TLS connections open at once (accepted ones, TLS handshakes included, and those
    /// the gateway opens); more are closed at accept.
    #[arg(long, value_name = "N", default_value = "10000", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// TCP and TLS connections accepted from one address (an IPv6 address counts by its /64),
    /// TLS handshakes included; more from that address are closed at accept, while other
    /// addresses still connect.
    #[arg(long, value_name = "N", default_value = "100", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_address: u32,
    /// Seconds a message on TCP or TLS may take from its first byte to the end of its body; a
    /// peer that is slower (one byte now and then) is disconnected. `10` or `10s`.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    message_timeout: Duration,
    /// Seconds a TCP or TLS connection may stay silent between messages (RFC 5626 keep-alives
    /// count as traffic). `300` or `300s`.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_seconds)]
    connection_idle_timeout: Duration,
    /// Seconds an accepted TLS connection's handshake may take. `5` or `5s`.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    tls_handshake_timeout: Duration,
    /// Seconds a write on a TCP or TLS connection may wait for the peer to read; a peer that
    /// does not read is disconnected. `10` or `10s`.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    write_timeout: Duration,
}

impl ServeArgs {
    fn into_options(self) -> ServeOptions {
        ServeOptions {
            listen: self.listen,
            internal_listen: self.internal_listen,
            tls: self.tls_cert.zip(self.tls_key),
            admin: self.admin,
            public_address: self.public_address,
            rtp_ports: self.rtp_ports,
            header_prefix: self.header_prefix,
            region: self.region,
            realm: self.realm,
            agent_timeout: self.agent_timeout,
            transfer_timeout: self.transfer_timeout.max(Duration::from_secs(1)),
            records_file: self.records_file,
            records_rotation: trunkline::observe::record::Rotation {
                max_bytes: self.records_max_bytes,
                max_age: Some(self.records_max_age).filter(|a| !a.is_zero()),
                keep: self.records_keep,
            },
            records_file_answered: self.records_file_answered,
            records_webhook_answered: self.records_webhook_answered,
            records_webhook: self.records_webhook,
            records_webhook_key_file: self.records_webhook_key_file,
            records_spool: self.records_spool,
            records_spool_max_bytes: self.records_spool_max_bytes,
            records_webhook_ca_file: self.records_webhook_ca_file,
            records_spool_adopt: self.records_spool_adopt,
            drain_timeout: self.drain_timeout,
            media_timeout: self.media_timeout.max(Duration::from_secs(1)),
            max_hold: Some(self.max_hold).filter(|d| !d.is_zero()),
            max_call_duration: Some(self.max_call_duration).filter(|d| !d.is_zero()),
            min_session_expires: self.min_session_expires,
            nonce_ttl: self.nonce_ttl,
            nonce_guesses: self.nonce_guesses,
            guard: trunkline::call::guard::GuardSettings {
                invite_rate: self.source_invite_rate,
                options_rate: self.source_options_rate,
                other_rate: self.source_request_rate,
                global_rate: self.global_request_rate,
                max_sources: usize::try_from(self.max_sources).unwrap_or(usize::MAX),
                auth_failures: self.auth_failures,
                auth_window: self.auth_failure_window,
                auth_lockout: self.auth_lockout,
                username_failures: self.username_failures,
                username_rate: self.username_attempt_rate,
            },
            refusal_log_interval: self.refusal_log_interval,
            digest_algorithms: self.digest_algorithms,
            agent_networks: self.agent_networks,
            agent_credentials: self.agent_credentials,
            tls_ca: self.tls_ca,
            api: self.api,
            api_token_file: self.api_token_file,
            agent_uri: self.agent_uri,
            stream_limits: trunkline::sip::transport::Limits {
                max_connections: self.max_connections as usize,
                max_connections_per_address: self.max_connections_per_address as usize,
                idle_timeout: self.connection_idle_timeout.max(Duration::from_secs(1)),
                message_timeout: self.message_timeout.max(Duration::from_secs(1)),
                handshake_timeout: self.tls_handshake_timeout.max(Duration::from_secs(1)),
                write_timeout: self.write_timeout.max(Duration::from_secs(1)),
                ..trunkline::sip::transport::Limits::default()
            },
        }
    }
}

/// Whole seconds, `30` or `30s` (the form Kubernetes manifests use).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let digits = s.trim().strip_suffix('s').unwrap_or(s.trim());
    digits
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?}: expected whole seconds, e.g. 30 or 30s"))
}

fn parse_algorithm(s: &str) -> Result<trunkline::sip::digest::Algorithm, String> {
    use trunkline::sip::digest::Algorithm;
    match Algorithm::from_token(s.trim()) {
        Some(a @ (Algorithm::Md5 | Algorithm::Sha256)) => Ok(a),
        _ => Err(format!("{s:?}: expected MD5 or SHA-256")),
    }
}

fn parse_admin(s: &str) -> Result<SocketAddr, String> {
    trunkline::sip::transport::parse_socket_addr(s).ok_or_else(|| format!("{s:?} is not IP:PORT"))
}

/// `explain --public-address`: `IP`, `[IPv6]`, or `IP:PORT`.
fn parse_public_address(s: &str) -> Result<PublicAddress, String> {
    let trimmed = s.trim().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(PublicAddress { ip, port: None });
    }
    trunkline::sip::transport::parse_socket_addr(s.trim())
        .map(|a| PublicAddress { ip: a.ip(), port: Some(a.port()) })
        .ok_or_else(|| format!("{s:?} is not IP or IP:PORT"))
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').ok_or("expected LOW-HIGH, e.g. 20000-30000")?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("{lo:?} is not a port"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("{hi:?} is not a port"))?;
    if lo == 0 || lo > hi || (hi - lo) < 1 {
        return Err(format!("{s}: LOW must be 1 or more and below HIGH"));
    }
    Ok((lo, hi))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// `--transport`: the one [`Transport`] type, spelled `udp`, `tcp` or `tls` on the command line
/// (a newtype, as clap's `ValueEnum` cannot be implemented on the library's type here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TransportFlag(Transport);

impl ValueEnum for TransportFlag {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            TransportFlag(Transport::Udp),
            TransportFlag(Transport::Tcp),
            TransportFlag(Transport::Tls),
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self.0 {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }))
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let log_format = cli.log_format;
    match cli.command {
        Command::Run(args) => run_folder(*args, log_format),
        Command::Gateway(args) => run_kube(*args, log_format),
        Command::Operator(args) => run_operator(*args, log_format),
        Command::Crds { out } => crds(out),
        Command::Check { paths, strict, region, output } => check(&paths, strict, region, output),
        Command::Explain(args) => {
            let ExplainArgs {
                specs,
                from,
                to,
                transport,
                user,
                caller,
                registered,
                headers,
                outbound,
                transfer,
                trunk,
                agent,
                caller_id,
                public_address,
                region,
                header_prefix,
                output,
            } = *args;
            let headers = parse_headers(&headers)?;
            if transfer {
                let query = crate::explain::transfer::TransferQuery {
                    trunk: trunk
                        .as_deref()
                        .context("--transfer needs --trunk: the call's trunk")?,
                    agent: agent
                        .as_deref()
                        .context("--transfer needs --agent: the call's agent")?,
                    to: &to,
                };
                let json = output == Output::Json;
                return crate::explain::transfer::run(&specs, region, &query, json);
            }
            if outbound {
                let query = crate::explain::OutboundQuery {
                    trunk: trunk.as_deref(),
                    to: &to,
                    agent: agent.as_deref(),
                    caller_id: caller_id.as_deref(),
                    headers: &headers,
                    header_prefix: &header_prefix,
                    public_address,
                };
                return crate::explain::run(&specs, region, &query, output == Output::Json);
            }
            let from = from.context("--from is required")?;
            let registered = match registered.as_deref().map(|r| r.split_once('/')) {
                None => None,
                Some(Some((namespace, name))) => {
                    Some(trunkline::config::model::ObjectName::new(namespace, name))
                }
                Some(None) => bail!("--registered names an OutboundTrunk as namespace/NAME"),
            };
            let call = ExplainCall {
                from: &from,
                to: &to,
                transport: transport.0,
                user: user.as_deref(),
                caller: &caller,
                registered,
                headers: &headers,
            };
            explain(&specs, &call, region, &header_prefix, output)
        }
    }
}

fn crds(out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    match out {
        None => {
            let mut all = String::new();
            for kind in Kind::ALL {
                all.push_str("---\n");
                all.push_str(&yaml::to_yaml(&kind.crd())?);
            }
            print!("{all}");
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for kind in Kind::ALL {
                let path = dir.join(kind.crd_file_name());
                std::fs::write(&path, trunkline::config::yaml::crd_yaml(kind)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(
    paths: &[PathBuf],
    strict: bool,
    region: Option<String>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let loaded = load_paths(paths);
    let report = CheckReport::build(loaded, &CompileOptions { region });
    match output {
        Output::Text => print!("{}", report.render_text()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.fails(strict) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `-H 'Name: value'` flags as header pairs.
fn parse_headers(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|h| match h.split_once(':') {
            Some((name, value)) if !name.trim().is_empty() => {
                Ok((name.trim().to_string(), value.trim().to_string()))
            }
            _ => bail!("header {h:?} is not of the form 'Name: value'"),
        })
        .collect()
}

/// The call `explain` is asked about, as given on the command line.
struct ExplainCall<'a> {
    from: &'a str,
    to: &'a str,
    transport: Transport,
    user: Option<&'a str>,
    caller: &'a str,
    registered: Option<trunkline::config::model::ObjectName>,
    headers: &'a [(String, String)],
}

fn explain(
    specs: &[PathBuf],
    call: &ExplainCall,
    region: Option<String>,
    header_prefix: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let source: IpAddr = match call.from.parse::<SocketAddr>() {
        Ok(sa) => sa.ip(),
        Err(_) => call
            .from
            .parse()
            .with_context(|| format!("--from {:?} is not an IP address or IP:PORT", call.from))?,
    };
    let request_uri = if call.to.contains(':') {
        call.to.to_string()
    } else {
        format!("sip:{}@trunkline.invalid", call.to)
    };

    let loaded = load_paths(specs);
    let problems = loaded.problems.len();
    let refused_at_load = loaded.refused.len();
    let compiled = compile(&loaded.specs, &CompileOptions { region });
    let refused =
        refused_at_load + compiled.verdicts.iter().filter(|v| v.state == State::Refused).count();

    let attempt = CallAttempt {
        transport: call.transport,
        source,
        digest_username: call.user,
        request_uri: &request_uri,
        from: call.caller,
        to: &request_uri,
        registration: call.registered.as_ref(),
        headers: call.headers,
    };
    let options = LookupOptions { header_prefix: header_prefix.to_string() };
    let decision = lookup::lookup(&compiled.table, &attempt, &options);
    let routed = matches!(decision.outcome, Outcome::Route(_));
    // What the agent would get of the -H headers (call::headers, as the gateway applies it).
    let contract = trunkline::call::headers::apply(
        header_prefix,
        call.headers,
        trunkline::call::headers::Limits::default(),
    );

    match output {
        Output::Json => {
            let mut json = serde_json::to_value(&decision)?;
            if let (true, Some(object)) = (routed, json.as_object_mut()) {
                object.insert("headerContract".into(), serde_json::to_value(&contract)?);
            }
            println!("{}", serde_json::to_string_pretty(&json)?)
        }
        Output::Text => {
            let mut out = String::new();
            let objects = compiled.verdicts.len() + refused_at_load;
            let _ = write!(
                out,
                "specs: {} trunk{}, {} number{} routed",
                compiled.table.inbound.len(),
                if compiled.table.inbound.len() == 1 { "" } else { "s" },
                compiled.table.number_count(),
                if compiled.table.number_count() == 1 { "" } else { "s" },
            );
            out.push_str(&crate::explain::refused_note(refused, objects, problems));
            out.push('\n');
            let _ = writeln!(
                out,
                "call:  INVITE {request_uri} over {} from {}{}",
                call.transport.as_str(),
                call.from,
                match call.user {
                    Some(u) => format!(", digest username {u:?} (response assumed valid)"),
                    None => ", no credentials".to_string(),
                }
            );
            for (i, step) in decision.steps.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{:>2}. {:<11} {} {}",
                    i + 1,
                    step.check.as_str(),
                    if step.passed { "ok  " } else { "FAIL" },
                    step.detail
                );
            }
            match &decision.outcome {
                Outcome::Route(r) => {
                    let _ = writeln!(
                        out,
                        "=> 100 Trying, then INVITE {} (agent {} by {}, trunk {})",
                        r.destination,
                        r.agent,
                        r.agent_reason.as_str().to_ascii_lowercase(),
                        r.trunk.name
                    );
                    for (name, value) in &contract.headers {
                        let _ = writeln!(out, "   passes {name}: {value}");
                    }
                    for name in &contract.removed {
                        let _ = writeln!(out, "   removes {name} (the gateway sets its own)");
                    }
                    for w in &contract.warnings {
                        let _ = writeln!(out, "   warning {}: {}", w.header, w.message);
                    }
                }
                Outcome::Challenge(_) => {
                    let _ = writeln!(
                        out,
                        "=> 407 Proxy Authentication Required (a trunk with digest admits this source; pass --user to explain the authenticated retry)"
                    );
                }
                Outcome::Refuse(r) => {
                    let _ = writeln!(
                        out,
                        "=> {} {} ({}): {}",
                        r.status,
                        trunkline::sip::msg::reason_phrase(r.status),
                        r.rule,
                        r.message
                    );
                }
            }
            print!("{out}");
        }
    }
    Ok(if routed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run_folder(args: RunArgs, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    init_logging(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let source = SpecSource::Folder { paths: args.specs, state_dir: args.state_dir };
    runtime.block_on(serve(source, args.serve.into_options()))?;
    Ok(ExitCode::SUCCESS)
}

fn run_kube(args: GatewayArgs, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    init_logging(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
        let options = KubeSourceOptions {
            credentials_secret: args.credentials_secret,
            pod_namespace: args.pod_namespace,
            watch_namespace: args.watch_namespace,
        };
        let node_address = args.public_address_node.map(|node| {
            Box::new(NodeAddressOptions {
                node,
                annotation: args.node_address_annotation,
                retry: Retry::default(),
            })
        });
        let source = SpecSource::Kube { client, options, node_address };
        serve(source, args.serve.into_options()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run_operator(args: OperatorArgs, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    init_logging(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let options = OperatorOptions {
        config: args.config,
        admin: args.admin,
        lease_name: args.lease_name,
        lease_namespace: args.pod_namespace,
        identity: args.pod_name,
        watch_namespace: args.watch_namespace,
        lease_duration: args.lease_duration,
        // Renew a third of the way before expiry (at least a second).
        lease_grace: (args.lease_duration / 3).max(Duration::from_secs(1)),
    };
    runtime.block_on(trunkline::runtime::operator::run_operator(options))?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        // The target tells a collector which module spoke; spans are flattened into the line.
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Command {
        let mut argv = vec!["trunkline"];
        argv.extend_from_slice(args);
        Cli::checked_from(argv).unwrap_or_else(|e| panic!("{e}")).command
    }

    #[test]
    fn the_gateway_deployments_command_line_parses() {
        let command = parse(&[
            "gateway",
            "--listen",
            "udp://0.0.0.0:5060",
            "--listen",
            "tcp://0.0.0.0:5060",
            "--internal-listen",
            "udp://0.0.0.0:5080",
            "--internal-listen",
            "tcp://0.0.0.0:5080",
            "--admin",
            "0.0.0.0:9090",
            "--rtp-ports",
            "20000-20999",
            "--public-address",
            "203.0.113.10",
            "--region",
            "us",
            "--credentials-secret",
            "fleet-credentials",
            "--drain-timeout",
            "30s",
        ]);
        let Command::Gateway(args) = command else { panic!("not the gateway subcommand") };
        assert_eq!(args.credentials_secret, "fleet-credentials");
        assert_eq!(args.watch_namespace, None);
        let options = args.serve.into_options();
        assert_eq!(options.listen.len(), 2);
        assert_eq!(options.internal_listen.len(), 2);
        assert_eq!(options.rtp_ports, (20000, 20999));
        assert_eq!(options.region.as_deref(), Some("us"));
        assert_eq!(options.drain_timeout, Duration::from_secs(30));
        assert_eq!(options.admin, "0.0.0.0:9090".parse().unwrap());
    }

    #[test]
    fn every_fleet_topologys_rendered_command_line_parses_as_kubernetes_expands_it() {
        use trunkline::operator::fleet::{NODE_NAME_REF, POD_IP_REF, POD_NAME_REF, gateway_args};
        use trunkline::operator::settings::OperatorSettings;
        let topologies = [
            "",
            "mode: DaemonSet\nlogFormat: json\nwatchNamespace: voice\n",
            "hostNetwork: false\npublicAddressFrom: Pod\n",
            "publicAddress: 203.0.113.9\nreplicas: 1\nhostNetwork: false\nrtpPorts: 40000-40099\n",
            "tls: {secretName: sip-tls}\ndigestAlgorithms: [SHA-256]\nrealm: acme\n",
            // Outbound calls: the call API, a CA toward carriers, the agent runtime's digest.
            "api: {enabled: true, port: 9443}\nagentUri: 'sip:agents.voice.svc:5070;transport=tcp'\n\
             agentNetworks: [10.42.0.0/16, 'fd00:42::/64']\n",
            "hostNetwork: false\npublicAddressFrom: Pod\napi: {enabled: true, tokenSecret: t}\n\
             tls: {caSecret: carrier-ca}\nagentCredentialsSecret: agent-creds\n",
            // Session records: stdout, a signed webhook and its spool on an emptyDir.
            "records: {webhook: {url: 'http://records.voice.svc/in', keySecret: {name: k}}}\n",
            // HTTPS with a private CA, the spools on a claim the fleet shares (one per pod).
            "mode: DaemonSet\nrecords: {webhook: {url: 'https://records.example.com/in', \
             caSecret: {name: ca}}, spool: {volume: {persistentVolumeClaim: {claimName: s}}}}\n",
        ];
        for text in topologies {
            let settings = OperatorSettings::parse(text, std::path::Path::new("t.yaml")).unwrap();
            // The pod's IP on IPv4 and IPv6 pod networks, as Kubernetes substitutes it.
            for pod_ip in ["10.0.0.7", "fd00::7"] {
                let args: Vec<String> = gateway_args(&settings)
                    .iter()
                    .map(|a| {
                        a.replace(POD_IP_REF, pod_ip)
                            .replace(NODE_NAME_REF, "node-1")
                            .replace(POD_NAME_REF, "gw-0")
                    })
                    .collect();
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                let Command::Gateway(parsed) = parse(&argv) else { panic!("not the gateway") };
                let options = parsed.serve.into_options();
                let internal_ip = options.internal_listen[0].addr.ip().to_string();
                // Zones: every agent-facing listener and the admin endpoints on the pod's
                // address only (the node's primary one on the host network), never on every
                // address; carriers on every address.
                for listen in &options.internal_listen {
                    assert_eq!(listen.addr.ip().to_string(), pod_ip, "{text:?}");
                }
                assert_eq!(options.admin.ip().to_string(), pod_ip, "{text:?}");
                assert!(options.listen.iter().all(|l| l.addr.ip().is_unspecified()), "{text:?}");
                assert_eq!(options.realm, settings.realm, "{text:?}");
                assert_eq!(parsed.watch_namespace, settings.watch_namespace, "{text:?}");
                // New calls from the agent side: the settings' networks, never the CLI's
                // loopback-only default.
                let networks: Vec<ipnet::IpNet> =
                    settings.agent_networks.iter().map(|n| n.0).collect();
                assert_eq!(options.agent_networks, networks, "{text:?}");
                assert_eq!(options.agent_uri, settings.agent_uri, "{text:?}");
                if settings.api.enabled {
                    // The API listens where the agent-facing listener does.
                    assert_eq!(options.api.ip().to_string(), internal_ip, "{text:?}");
                    assert_eq!(options.api.port(), settings.api.port, "{text:?}");
                    assert_eq!(
                        options.api_token_file.as_deref(),
                        Some(std::path::Path::new("/etc/trunkline/api/token")),
                        "{text:?}"
                    );
                } else {
                    assert_eq!(options.api_token_file, None, "{text:?}: no token, no API");
                }
                assert_eq!(options.tls_ca.is_some(), settings.tls.ca_secret.is_some(), "{text:?}");
                let webhook = &settings.records.webhook;
                assert_eq!(options.records_webhook, webhook.url, "{text:?}");
                assert_eq!(
                    options.records_webhook_ca_file.is_some(),
                    webhook.ca_secret.name.is_some(),
                    "{text:?}"
                );
                if options.records_spool_adopt {
                    // Each pod its own directory, the gone ones' beside it.
                    assert!(options.records_spool.ends_with("gw-0"), "{text:?}");
                }
                assert_eq!(
                    options.agent_credentials.is_some(),
                    settings.agent_credentials_secret.is_some(),
                    "{text:?}"
                );
            }
        }
    }

    /// The options a fleet gateway runs with: its rendered arguments, expanded as Kubernetes
    /// does, parsed as the gateway parses them.
    fn fleet_gateway_options(settings: &str) -> ServeOptions {
        use trunkline::operator::fleet::{NODE_NAME_REF, POD_IP_REF, POD_NAME_REF, gateway_args};
        use trunkline::operator::settings::OperatorSettings;
        let settings = OperatorSettings::parse(settings, std::path::Path::new("t.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let args: Vec<String> = gateway_args(&settings)
            .iter()
            .map(|a| {
                a.replace(POD_IP_REF, "10.0.0.7")
                    .replace(NODE_NAME_REF, "node-1")
                    .replace(POD_NAME_REF, "gw-0")
            })
            .collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let Command::Gateway(parsed) = parse(&argv) else { panic!("not the gateway") };
        parsed.serve.into_options()
    }

    #[test]
    fn the_fleets_security_limits_default_to_the_gateways_own_and_reach_it_when_changed() {
        // A default fleet enforces what a gateway started with no flag enforces.
        let Command::Gateway(bare) = parse(&["gateway"]) else { panic!("not gateway") };
        let bare = bare.serve.into_options();
        let fleet = fleet_gateway_options("");
        assert_eq!(fleet.guard, bare.guard);
        assert_eq!(fleet.stream_limits, bare.stream_limits);
        assert_eq!(
            (fleet.nonce_guesses, fleet.refusal_log_interval),
            (bare.nonce_guesses, bare.refusal_log_interval)
        );
        assert_eq!(
            (fleet.max_call_duration, fleet.max_hold, fleet.min_session_expires),
            (bare.max_call_duration, bare.max_hold, bare.min_session_expires)
        );
        // Every value changed in the settings is what the gateway runs with.
        let changed = fleet_gateway_options(
            "maxCallDurationSeconds: 0\nmaxHoldSeconds: 600\nminSessionExpiresSeconds: 120\n\
             guard: {sourceInviteRate: 5, sourceOptionsRate: 0, sourceRequestRate: 3, \
             globalRequestRate: 400, maxSources: 1024, authFailures: 3, \
             authFailureWindowSeconds: 120, authLockoutSeconds: 3600, usernameFailures: 0, \
             usernameAttemptRate: 4, nonceGuesses: 1, refusalLogIntervalSeconds: 30}\n\
             connections: {max: 500, maxPerAddress: 8, messageTimeoutSeconds: 4, \
             idleTimeoutSeconds: 90, tlsHandshakeTimeoutSeconds: 3, writeTimeoutSeconds: 6}\n",
        );
        assert_eq!(
            changed.guard,
            trunkline::call::guard::GuardSettings {
                invite_rate: 5,
                options_rate: 0,
                other_rate: 3,
                global_rate: 400,
                max_sources: 1024,
                auth_failures: 3,
                auth_window: Duration::from_secs(120),
                auth_lockout: Duration::from_secs(3600),
                username_failures: 0,
                username_rate: 4,
            }
        );
        assert_eq!(changed.nonce_guesses, 1);
        assert_eq!(changed.refusal_log_interval, Duration::from_secs(30));
        assert_eq!(changed.max_call_duration, None, "0: no ceiling");
        assert_eq!(changed.max_hold, Some(Duration::from_secs(600)));
        assert_eq!(changed.min_session_expires, 120);
        let limits = changed.stream_limits;
        assert_eq!((limits.max_connections, limits.max_connections_per_address), (500, 8));
        assert_eq!(
            (
                limits.message_timeout,
                limits.idle_timeout,
                limits.handshake_timeout,
                limits.write_timeout
            ),
            (
                Duration::from_secs(4),
                Duration::from_secs(90),
                Duration::from_secs(3),
                Duration::from_secs(6)
            )
        );
    }

    #[test]
    fn the_gateway_has_defaults_for_everything_but_its_pod() {
        let Command::Gateway(args) = parse(&["gateway"]) else { panic!("not gateway") };
        assert_eq!(args.credentials_secret, "trunkline-gateway-credentials");
        assert_eq!(args.serve.drain_timeout, Duration::from_secs(30));
        let Command::Gateway(args) =
            parse(&["gateway", "--pod-namespace", "tl", "--watch-namespace", "voice"])
        else {
            panic!("not gateway")
        };
        assert_eq!(args.pod_namespace.as_deref(), Some("tl"));
        assert_eq!(args.watch_namespace.as_deref(), Some("voice"));
    }

    #[test]
    fn run_keeps_its_flags_and_the_last_of_a_repeated_one_wins() {
        let Command::Run(args) = parse(&[
            "run",
            "--specs",
            "examples",
            "--state-dir",
            "/tmp/st",
            "--drain-timeout",
            "1",
            "--drain-timeout",
            "20",
            "--media-timeout",
            "0",
        ]) else {
            panic!("not run")
        };
        assert_eq!(args.specs, vec![PathBuf::from("examples")]);
        assert_eq!(args.state_dir, PathBuf::from("/tmp/st"));
        let options = args.serve.into_options();
        assert_eq!(options.drain_timeout, Duration::from_secs(20));
        assert_eq!(options.media_timeout, Duration::from_secs(1), "at least a second");
        assert!(Cli::try_parse_from(["trunkline", "gateway", "--specs", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["trunkline", "run", "--specs", "x", "--drain-timeout", "3m"])
                .is_err()
        );
    }

    #[test]
    fn the_stream_limits_have_safe_defaults_and_take_their_flags() {
        use trunkline::sip::transport::Limits;
        let Command::Gateway(args) = parse(&["gateway"]) else { panic!("not gateway") };
        assert_eq!(args.serve.into_options().stream_limits, Limits::default());
        let Command::Run(args) = parse(&[
            "run",
            "--specs",
            "x",
            "--max-connections",
            "50",
            "--max-connections-per-address",
            "4",
            "--message-timeout",
            "3s",
            "--connection-idle-timeout",
            "60",
            "--tls-handshake-timeout",
            "2",
            "--write-timeout",
            "0",
        ]) else {
            panic!("not run")
        };
        let limits = args.serve.into_options().stream_limits;
        assert_eq!(limits.max_connections, 50);
        assert_eq!(limits.max_connections_per_address, 4);
        assert_eq!(limits.message_timeout, Duration::from_secs(3));
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.handshake_timeout, Duration::from_secs(2));
        assert_eq!(limits.write_timeout, Duration::from_secs(1), "at least a second");
        for zero in ["--max-connections", "--max-connections-per-address"] {
            assert!(Cli::try_parse_from(["trunkline", "run", "--specs", "x", zero, "0"]).is_err());
        }
    }

    #[test]
    fn every_flag_of_run_gateway_and_operator_is_documented() {
        let cli = Cli::command();
        for name in ["run", "gateway", "operator"] {
            let sub = cli.find_subcommand(name).expect("the subcommand");
            assert!(sub.get_about().is_some(), "{name} has no description");
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some_and(|h| !h.to_string().is_empty()),
                    "{name} --{} has no help",
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn the_gateway_can_advertise_its_nodes_address_instead_of_a_fixed_one() {
        let Command::Gateway(args) = parse(&["gateway", "--public-address-node", "edge-1"]) else {
            panic!("not gateway")
        };
        assert_eq!(args.public_address_node.as_deref(), Some("edge-1"));
        assert_eq!(args.node_address_annotation, "trunkline.dev/public-address");
        let Command::Gateway(args) = parse(&[
            "gateway",
            "--public-address-node",
            "edge-1",
            "--node-address-annotation",
            "example.com/sip-address",
        ]) else {
            panic!("not gateway")
        };
        assert_eq!(args.node_address_annotation, "example.com/sip-address");
        let both = [
            "trunkline",
            "gateway",
            "--public-address-node",
            "edge-1",
            "--public-address",
            "203.0.113.1",
        ];
        assert!(Cli::checked_from(both).is_err(), "the two flags conflict");
        assert!(
            Cli::try_parse_from(["trunkline", "run", "--specs", "x", "--public-address-node", "n"])
                .is_err()
        );
    }

    #[test]
    fn the_log_format_is_a_flag_of_every_subcommand_text_by_default() {
        let cli =
            Cli::try_parse_from(["trunkline", "check", "x"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.log_format, LogFormat::Text);
        for args in [
            &["trunkline", "run", "--specs", "x", "--log-format", "json"][..],
            &["trunkline", "--log-format", "json", "gateway"],
            &["trunkline", "operator", "--log-format=json"],
            &["trunkline", "crds", "--log-format", "json"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.log_format, LogFormat::Json, "{args:?}");
        }
        assert!(Cli::try_parse_from(["trunkline", "crds", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn explain_outbound_takes_its_own_flags_and_a_public_address_with_or_without_port() {
        let Command::Explain(args) = parse(&[
            "explain",
            "--specs",
            "examples",
            "--outbound",
            "--trunk",
            "voice/carrier-out",
            "--to",
            "+14155550142",
            "--agent",
            "support",
            "--caller-id",
            "+14155550101",
            "--public-address",
            "203.0.113.5",
        ]) else {
            panic!("not explain")
        };
        assert!(args.outbound);
        assert_eq!(args.from, None, "--from is for inbound calls");
        assert_eq!(args.trunk.as_deref(), Some("voice/carrier-out"));
        assert_eq!(args.agent.as_deref(), Some("support"));
        assert_eq!(args.caller_id.as_deref(), Some("+14155550101"));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(args.public_address, Some(PublicAddress { ip: ip("203.0.113.5"), port: None }));
        for (text, ip_text, port) in [
            ("203.0.113.5:5070", "203.0.113.5", Some(5070)),
            ("2001:db8::5", "2001:db8::5", None),
            ("[2001:db8::5]", "2001:db8::5", None),
            ("[2001:db8::5]:5070", "2001:db8::5", Some(5070)),
        ] {
            assert_eq!(
                parse_public_address(text),
                Ok(PublicAddress { ip: ip(ip_text), port }),
                "{text}"
            );
        }
        assert!(parse_public_address("gw.example").is_err());
    }

    #[test]
    fn the_charts_operator_command_line_parses() {
        let Command::Operator(args) = parse(&[
            "operator",
            "--config",
            "/etc/trunkline/operator.yaml",
            "--admin",
            "0.0.0.0:8080",
            "--lease-name",
            "edge-operator",
        ]) else {
            panic!("not the operator subcommand")
        };
        assert_eq!(
            args.config.as_deref(),
            Some(std::path::Path::new("/etc/trunkline/operator.yaml"))
        );
        assert_eq!(args.lease_name.as_deref(), Some("edge-operator"));
        assert_eq!(args.lease_duration, Duration::from_secs(15));
    }
}
