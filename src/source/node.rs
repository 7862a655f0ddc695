//! The address a gateway pod advertises, read from its own Node (`trunkline gateway
//! --public-address-node NODE`).
//!
//! A fleet on the host network serves SIP and RTP on its node's addresses, so each pod must put
//! *its own node's* address in Via, Contact and SDP: one `--public-address` for the whole fleet
//! cannot be right. At start the gateway GETs its Node (`/api/v1/nodes/NODE`, RBAC `get` on
//! `nodes`) and picks, in this order:
//!
//! 1. the value of the annotation `trunkline.dev/public-address` (`--node-address-annotation`),
//!    which must be an IP address: set by an administrator where the node's public address
//!    is not in its status (NAT, an elastic IP); a value that is no IP is an error, not ignored;
//! 2. the first `ExternalIP` of `status.addresses` (cloud nodes with public addresses);
//! 3. the first `InternalIP` (bare-metal nodes often have only that, and it is routable).
//!
//! Addresses of a type that do not parse as IPs are passed over. [`node_public_address`] is the
//! pure choice; [`fetch_node_public_address`] GETs the Node with retries (backoff, bounded in
//! time: the kubelet restarts a pod that gives up, and it stays not ready meanwhile) and logs the
//! choice at INFO. Called by `runtime::gateway` before the listeners open.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

/// The default annotation of a Node that names the address its gateway advertises.
pub const DEFAULT_ADDRESS_ANNOTATION: &str = "trunkline.dev/public-address";

/// Where the advertised address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSource {
    /// The node's address annotation.
    Annotation,
    /// The first `ExternalIP` of the node's status.
    ExternalIp,
    /// The first `InternalIP` of the node's status (no `ExternalIP`).
    InternalIp,
}

impl AddressSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressSource::Annotation => "annotation",
            AddressSource::ExternalIp => "ExternalIP",
            AddressSource::InternalIp => "InternalIP",
        }
    }
}

/// Why a node gave no address.
#[derive(Debug, thiserror::Error)]
pub enum NodeAddressError {
    #[error("node {node}: annotation {annotation}={value:?} is not an IP address")]
    BadAnnotation { node: String, annotation: String, value: String },
    #[error(
        "node {node} has no {annotation} annotation and no ExternalIP or InternalIP in \
         status.addresses: set the annotation to the address carriers reach this node at"
    )]
    NoAddress { node: String, annotation: String },
    #[error(
        "cannot read node {node} for its address (needs RBAC get on nodes), gave up after \
         {attempts} attempts in {waited:?}"
    )]
    Get {
        node: String,
        attempts: u32,
        waited: Duration,
        #[source]
        source: kube::Error,
    },
}

/// The address `node` advertises for its gateways, and why (see the module docs).
pub fn node_public_address(
    node: &Node,
    annotation: &str,
) -> Result<(IpAddr, AddressSource), NodeAddressError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    if let Some(value) = node.metadata.annotations.as_ref().and_then(|a| a.get(annotation)) {
        return value.trim().parse().map(|ip| (ip, AddressSource::Annotation)).map_err(|_| {
            NodeAddressError::BadAnnotation {
                node: name,
                annotation: annotation.to_string(),
                value: value.clone(),
            }
        });
    }
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or_default();
    let first = |type_: &str| {
        addresses
            .iter()
            .filter(|a| a.type_ == type_)
            .find_map(|a| a.address.trim().parse::<IpAddr>().ok())
    };
    if let Some(ip) = first("ExternalIP") {
        return Ok((ip, AddressSource::ExternalIp));
    }
    if let Some(ip) = first("InternalIP") {
        return Ok((ip, AddressSource::InternalIp));
    }
    Err(NodeAddressError::NoAddress { node: name, annotation: annotation.to_string() })
}

/// How long and how often [`fetch_node_public_address`] tries to read the Node.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Wait after the first failure; doubled after each one, up to `max_wait`.
    pub first_wait: Duration,
    pub max_wait: Duration,
    /// No new attempt once this much time has passed since the first.
    pub give_up_after: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            first_wait: Duration::from_millis(500),
            max_wait: Duration::from_secs(8),
            give_up_after: Duration::from_secs(60),
        }
    }
}

/// GETs `node` and picks its address ([`node_public_address`]); a failed GET is tried again
/// with backoff until `retry.give_up_after`. A node without a usable address is an error at
/// once (retrying would not change it).
pub async fn fetch_node_public_address(
    client: Client,
    node: &str,
    annotation: &str,
    retry: Retry,
) -> Result<IpAddr, NodeAddressError> {
    let api: Api<Node> = Api::all(client);
    let started = tokio::time::Instant::now();
    let mut wait = retry.first_wait;
    let mut attempts = 0;
    let found = loop {
        attempts += 1;
        match api.get(node).await {
            Ok(found) => break found,
            Err(source) => {
                let waited = started.elapsed();
                if waited + wait > retry.give_up_after {
                    return Err(NodeAddressError::Get {
                        node: node.to_string(),
                        attempts,
                        waited,
                        source,
                    });
                }
                // INFO, not WARN: the API server or the RBAC may simply not be there yet.
                tracing::info!(node, error = %source, retry_in = ?wait, "cannot read the node yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(retry.max_wait);
            }
        }
    };
    let (ip, source) = node_public_address(&found, annotation)?;
    let why = match source {
        AddressSource::Annotation => format!("its annotation {annotation}"),
        AddressSource::ExternalIp => format!("its first ExternalIP (no {annotation} annotation)"),
        AddressSource::InternalIp => {
            format!("its first InternalIP (no {annotation} annotation, no ExternalIP)")
        }
    };
    tracing::info!(node, address = %ip, source = source.as_str(), "advertising {ip}, the address of node {node} from {why}");
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::{Method, Response};
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::client::Body;

    use super::*;
    use crate::fixtures::{self, mock_client, ok, status_response};

    const KEY: &str = DEFAULT_ADDRESS_ANNOTATION;

    fn node(annotation: Option<&str>, addresses: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("edge-1".into()),
                annotations: annotation.map(|v| BTreeMap::from([(KEY.to_string(), v.to_string())])),
                ..ObjectMeta::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress { type_: t.to_string(), address: a.to_string() })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP")
    }

    const CLOUD: &[(&str, &str)] = &[
        ("Hostname", "edge-1"),
        ("InternalIP", "10.0.0.5"),
        ("ExternalIP", "203.0.113.5"),
        ("ExternalIP", "203.0.113.6"),
    ];

    #[test]
    fn the_annotation_wins_over_the_status_addresses() {
        let n = node(Some(" 198.51.100.9 "), CLOUD);
        let got = node_public_address(&n, KEY).expect("an address");
        assert_eq!(got, (ip("198.51.100.9"), AddressSource::Annotation));
    }

    #[test]
    fn without_the_annotation_the_first_external_ip_is_used() {
        let got = node_public_address(&node(None, CLOUD), KEY).expect("an address");
        assert_eq!(got, (ip("203.0.113.5"), AddressSource::ExternalIp));
    }

    #[test]
    fn a_node_with_only_an_internal_ip_advertises_it() {
        let bare_metal = node(None, &[("InternalIP", "192.168.10.4"), ("Hostname", "edge-1")]);
        let got = node_public_address(&bare_metal, KEY).expect("an address");
        assert_eq!(got, (ip("192.168.10.4"), AddressSource::InternalIp));
    }

    #[test]
    fn an_annotation_that_is_no_ip_is_an_error_naming_node_annotation_and_value() {
        let err = node_public_address(&node(Some("edge.example"), CLOUD), KEY).expect_err("bad");
        assert!(matches!(err, NodeAddressError::BadAnnotation { .. }));
        let text = err.to_string();
        for part in ["edge-1", KEY, "edge.example"] {
            assert!(text.contains(part), "{part} not in {text}");
        }
    }

    #[test]
    fn a_node_without_any_address_is_an_error() {
        let err = node_public_address(&node(None, &[("Hostname", "edge-1")]), KEY).expect_err("");
        assert!(matches!(err, NodeAddressError::NoAddress { .. }), "{err}");
        assert!(err.to_string().contains("edge-1"), "{err}");
        let mut no_status = node(None, &[]);
        no_status.status = None;
        assert!(node_public_address(&no_status, KEY).is_err());
    }

    #[test]
    fn ipv6_addresses_are_taken_and_unparsable_ones_passed_over() {
        let n = node(None, &[("ExternalIP", "not-an-ip"), ("ExternalIP", "2001:db8::5")]);
        assert_eq!(
            node_public_address(&n, KEY).expect("an address"),
            (ip("2001:db8::5"), AddressSource::ExternalIp)
        );
        let n = node(Some("2001:db8::9"), &[]);
        assert_eq!(node_public_address(&n, KEY).expect("an address").0, ip("2001:db8::9"));
        let n = node(None, &[("InternalIP", "fd00::4")]);
        assert_eq!(node_public_address(&n, "other.example/key").expect("").0, ip("fd00::4"));
    }

    fn server_error() -> Response<Body> {
        status_response(500, "InternalError", "etcd is away")
    }

    /// Runs the fetch against a mock API server answering each GET with the next of `answers`
    /// (then 500s); gives the result and the paths asked for.
    async fn fetch(
        answers: Vec<Response<Body>>,
        retry: Retry,
    ) -> (Result<IpAddr, NodeAddressError>, Vec<String>) {
        let (client, handle) = mock_client();
        let mut answers = answers.into_iter();
        let server = fixtures::serve(handle, move |request, send| {
            assert_eq!(request.method, Method::GET);
            send.send_response(answers.next().unwrap_or_else(server_error));
        });
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            fetch_node_public_address(client, "edge-1", KEY, retry),
        )
        .await
        .expect("the fetch ends");
        let paths = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the mock server stops")
            .expect("the mock server did not panic");
        (result, paths.into_iter().map(|r| r.path).collect())
    }

    const QUICK: Retry = Retry {
        first_wait: Duration::from_millis(10),
        max_wait: Duration::from_millis(40),
        give_up_after: Duration::from_millis(300),
    };

    #[tokio::test]
    async fn the_node_is_read_again_after_a_failure_and_its_address_taken() {
        let found = serde_json::to_value(node(None, CLOUD)).expect("json");
        let (result, paths) = fetch(vec![server_error(), server_error(), ok(&found)], QUICK).await;
        assert_eq!(result.expect("an address"), ip("203.0.113.5"));
        assert_eq!(paths, vec!["/api/v1/nodes/edge-1"; 3]);
    }

    #[tokio::test]
    async fn a_node_that_cannot_be_read_is_given_up_after_the_bound() {
        let started = std::time::Instant::now();
        let (result, paths) = fetch(Vec::new(), QUICK).await;
        let err = result.expect_err("never readable");
        assert!(
            matches!(err, NodeAddressError::Get { attempts, .. } if attempts as usize == paths.len())
        );
        assert!(paths.len() >= 3, "retried: {paths:?}");
        // Bounded: the last wait would have passed give_up_after.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("edge-1"), "{err}");
    }

    #[tokio::test]
    async fn a_bad_annotation_is_an_error_without_retrying() {
        let found = serde_json::to_value(node(Some("nope"), CLOUD)).expect("json");
        let (result, paths) = fetch(vec![ok(&found)], QUICK).await;
        assert!(matches!(result, Err(NodeAddressError::BadAnnotation { .. })));
        assert_eq!(paths.len(), 1);
    }
}
