//! The call API's token in a cluster (issue 12): `trunkline operator`, the built binary, against
//! the fake API server of `support/apiserver.rs`, with `api.enabled` and no `api.tokenSecret`.
//!
//! - `the_operator_creates_the_api_token_before_the_gateways_that_mount_it`: the Secret
//!   `<fleet>-api-token` (key `token`, random, owned by the operator's Deployment) is created
//!   before the gateway Deployment that mounts it is applied, and the token is in no log line.
//! - `an_existing_api_token_is_kept_as_it_is`: a token Secret already there (the agent runtime
//!   holds that token) is never overwritten.
//!
//! Each test is bounded: every wait gives up after [`WITHIN`], and the operator is stopped when
//! the test ends (`support::process`: SIGTERM, then SIGKILL).

// Harness code is test code (STYLE.md allows unwrap and panic in tests).
#![allow(clippy::unwrap_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use support::apiserver::{ApiServer, Logged};
use support::free_port;
use support::net::{LOCALHOST, TempDir};
use support::process::TrunklineProcess;

const NAMESPACE: &str = "trunkline";
const OPERATOR_DEPLOYMENT: &str = "trunkline-operator";
const TOKEN_SECRET: &str = "edge-api-token";
const DEPLOYMENTS: &str = "apps/v1/deployments";
const SECRETS: &str = "v1/secrets";
const WITHIN: Duration = Duration::from_secs(15);

/// One gateway at a fixed address with the call API on; no token Secret named.
const SETTINGS: &str = "name: edge\nnamespace: trunkline\npublicAddress: 127.0.0.1\nreplicas: 1\n\
                        operatorDeployment: trunkline-operator\napi: {enabled: true}\n";

/// The fake API server with the operator's Deployment (the owner of what it creates), and the
/// operator running against it with [`SETTINGS`].
struct Cluster {
    operator: TrunklineProcess,
    api: ApiServer,
    _dir: TempDir,
}

impl Cluster {
    fn start(existing: &[Value]) -> Cluster {
        let api = ApiServer::start();
        let dir = TempDir::new("operator-api-token");
        api.write_kubeconfig(&dir.join("kubeconfig"), NAMESPACE);
        api.put(
            DEPLOYMENTS,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": OPERATOR_DEPLOYMENT, "namespace": NAMESPACE}, "spec": {}}),
        );
        for secret in existing {
            api.put(SECRETS, secret.clone());
        }
        std::fs::write(dir.join("operator.yaml"), SETTINGS).unwrap();
        let admin = SocketAddr::from((LOCALHOST, free_port()));
        let args: Vec<String> = [
            "operator",
            "--config",
            dir.join("operator.yaml").to_str().unwrap(),
            "--admin",
            &admin.to_string(),
            "--pod-name",
            "trunkline-operator-0",
            "--pod-namespace",
            NAMESPACE,
        ]
        .map(String::from)
        .to_vec();
        let kubeconfig = dir.join("kubeconfig");
        let operator =
            TrunklineProcess::spawn("operator", &dir.join("operator.log"), &args, |command| {
                command
                    .env("KUBECONFIG", kubeconfig)
                    .env_remove("KUBERNETES_SERVICE_HOST")
                    .env_remove("POD_NAME")
                    .env_remove("POD_NAMESPACE");
            });
        Cluster { operator, api, _dir: dir }
    }

    /// Waits until the operator has applied the gateway Deployment, and returns it.
    fn gateway_deployment(&self) -> Value {
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(deployment) = self.api.get(DEPLOYMENTS, NAMESPACE, "edge-gateway") {
                return deployment;
            }
            assert!(
                Instant::now() < deadline,
                "no gateway Deployment within {WITHIN:?}; requests:\n{}\n{}",
                self.api.request_log(),
                self.operator.log_section()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The index in the request log of the first request that `matches`.
    fn first(&self, what: &str, matches: impl Fn(&Logged) -> bool) -> usize {
        let requests = self.api.requests();
        requests
            .iter()
            .position(matches)
            .unwrap_or_else(|| panic!("no {what}; requests:\n{}", self.api.request_log()))
    }

    /// Every request but a read that touched the token Secret: `METHOD path status`.
    fn token_writes(&self) -> Vec<String> {
        self.api
            .requests()
            .iter()
            .filter(|r| r.method != "GET" && is_token_request(r))
            .map(|r| format!("{} {} {}", r.method, r.path, r.status))
            .collect()
    }
}

/// A request about the token Secret: by its path, or a POST creating it.
fn is_token_request(r: &Logged) -> bool {
    r.path.ends_with(&format!("/secrets/{TOKEN_SECRET}"))
        || (r.path.ends_with("/secrets")
            && r.body.as_ref().is_some_and(|b| b["metadata"]["name"] == TOKEN_SECRET))
}

fn token_of(secret: &Value) -> String {
    let encoded = secret["data"]["token"].as_str().unwrap_or_default();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap()
}

#[test]
fn the_operator_creates_the_api_token_before_the_gateways_that_mount_it() {
    let cluster = Cluster::start(&[]);
    let deployment = cluster.gateway_deployment();
    // The gateways mount the generated Secret, its `token` key only.
    let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
    let volume = volumes.as_array().unwrap().iter().find(|v| v["name"] == "api-token").unwrap();
    assert_eq!(volume["secret"]["secretName"], TOKEN_SECRET);
    assert_eq!(volume["secret"]["items"], json!([{"key": "token", "path": "token"}]));

    let secret = cluster.api.get(SECRETS, NAMESPACE, TOKEN_SECRET).expect("the token Secret");
    assert_eq!(secret["type"], "Opaque");
    let token = token_of(&secret);
    assert_eq!(token.len(), 32, "192 random bits");
    let owner = cluster.api.get(DEPLOYMENTS, NAMESPACE, OPERATOR_DEPLOYMENT).unwrap();
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], owner["metadata"]["uid"]);
    assert_eq!(secret["metadata"]["ownerReferences"][0]["name"], OPERATOR_DEPLOYMENT);

    // Created before the Deployment that mounts it (a pod with a missing Secret volume would
    // never start).
    let created = cluster.first("POST of the token Secret", |r| {
        r.method == "POST" && is_token_request(r) && r.status == 201
    });
    let applied = cluster.first("apply of the gateway Deployment", |r| {
        r.method == "PATCH"
            && r.path == "/apis/apps/v1/namespaces/trunkline/deployments/edge-gateway"
    });
    assert!(created < applied, "the token Secret came after the Deployment");
    // Written once, and never logged.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster.token_writes(), ["POST /api/v1/namespaces/trunkline/secrets 201"]);
    assert!(!cluster.operator.log_text().contains(&token), "the token is in the log");
    assert_eq!(token_of(&cluster.api.get(SECRETS, NAMESPACE, TOKEN_SECRET).unwrap()), token);
}

#[test]
fn an_existing_api_token_is_kept_as_it_is() {
    let kept = base64::engine::general_purpose::STANDARD.encode("the-token-agents-hold");
    let cluster = Cluster::start(&[json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": TOKEN_SECRET, "namespace": NAMESPACE},
        "data": {"token": kept},
    })]);
    cluster.gateway_deployment();
    let secret = cluster.api.get(SECRETS, NAMESPACE, TOKEN_SECRET).unwrap();
    assert_eq!(token_of(&secret), "the-token-agents-hold");
    // The operator tried to create it, heard 409, and left it: no PUT, no PATCH.
    assert_eq!(cluster.token_writes(), ["POST /api/v1/namespaces/trunkline/secrets 409"]);
}
