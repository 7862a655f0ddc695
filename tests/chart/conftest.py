"""Shared helpers of the chart tests: render charts/trunkline with the Helm SDK (helm-python-sdk,
which binds Helm's own Go code; no helm binary, no cluster) and parse what it renders.

Run through tests/run.sh, which makes the virtual environment; by hand:
    target/chart-venv/bin/python -m pytest tests/chart
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "trunkline"
RELEASE = "trunkline"
NAMESPACE = "voice"
# The oldest Kubernetes the operator supports (k8s-openapi feature v1_33; Chart.yaml kubeVersion).
KUBE_VERSION = "1.33.0"

# Value sets every structural check runs on: the defaults and the shapes an infra team uses.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "daemonset-hostnetwork": {
        "gateway": {
            "mode": "DaemonSet",
            "hostNetwork": True,
            "carrierService": {"type": "ClusterIP"},
            "nodeSelector": {"trunkline.dev/edge": "true"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "sip", "effect": "NoSchedule"}
            ],
            "region": "eu-west",
            "egressAddresses": ["198.51.100.10", "198.51.100.11"],
        }
    },
    "loadbalancer-source-ranges": {
        "gateway": {
            "publicAddress": "198.51.100.7",
            "replicas": 1,
            "tls": {"secretName": "sip-tls"},
            "carrierService": {
                "type": "LoadBalancer",
                "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
                "loadBalancerSourceRanges": ["203.0.113.0/24", "2001:db8::/32"],
            },
        }
    },
    "pod-addresses": {
        "gateway": {"hostNetwork": False, "publicAddressFrom": "Pod", "replicas": 4,
                    "podLabels": {"team": "voice"}, "logFormat": "json"}
    },
    "fixed-single-gateway-host-ports": {
        "gateway": {"hostNetwork": False, "publicAddress": "198.51.100.40", "replicas": 1,
                    "rtpPorts": "40000-40099", "carrierService": {"type": "NodePort"}}
    },
    "servicemonitor": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        },
        "grafanaDashboard": {"enabled": True},
    },
    "networkpolicy": {
        "gateway": {"tls": {"secretName": "sip-tls"}, "rtpPorts": "30000-30999"},
        "networkPolicy": {
            "enabled": True,
            "carriers": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
            "agents": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agents"}}}
            ],
            "prometheus": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ],
        },
    },
    "outbound-api-pod-network": {
        "gateway": {
            "hostNetwork": False, "publicAddressFrom": "Pod",
            "agentNetworks": ["10.42.0.0/16", "fd00:42::/64"],
            "api": {"enabled": True, "port": 9443},
            "agentUri": "sip:agents.voice.svc.cluster.local:5070;transport=tcp",
            "agentCredentialsSecret": "agent-runtime-credentials",
            "tls": {"caSecret": "carrier-ca"},
        },
        "networkPolicy": {
            "enabled": True,
            "agents": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agents"}}}
            ],
        },
    },
    # Zones: the agent runtime's pods by label in one namespace, nobody scrapes.
    "networkpolicy-agent-pods-no-scrape": {
        "gateway": {"hostNetwork": False, "publicAddressFrom": "Pod", "api": {"enabled": True}},
        "networkPolicy": {
            "agents": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "voice-ai"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "agent-runtime"}}}
            ],
            "prometheus": [],
        },
    },
    "records-webhook-shared-claim": {
        "gateway": {
            "records": {
                "webhook": {
                    "url": "https://records.example.com/v1/calls",
                    "keySecret": {"name": "records-hmac", "key": "hmac"},
                    "caSecret": {"name": "records-ca"},
                },
                "spool": {"maxBytes": 268435456,
                          "volume": {"persistentVolumeClaim": {"claimName": "trunkline-records"}}},
            },
        },
    },
    "private-registry-single-namespace": {
        "imagePullSecrets": ["registry-credentials"],
        "operator": {
            "image": {
                "repository": "registry.example/voice/trunkline",
                "digest": "sha256:" + "a" * 64,
                "pullPolicy": "Always",
            },
            "replicas": 1,
            "watchNamespace": "trunks",
            "leaseName": "voice-leader",
            "logLevel": "trunkline=debug,info",
        },
        "gateway": {"name": "edge", "drainSeconds": 120},
    },
}


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE,
           namespace: str = NAMESPACE) -> dict[str, str]:
    """Renders the chart as `helm install` would (values checked against values.schema.json)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=release, namespace=namespace, is_install=True)


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a rendering (NOTES.txt and empty documents left out)."""
    objects = []
    for template, text in sorted(rendered.items()):
        if not template.endswith(".yaml"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects.append(document)
    return objects


class Rendering:
    """One rendering of the chart, with lookups by kind and name."""

    def __init__(self, values: dict[str, Any] | None = None, **kwargs: Any):
        self.values = copy.deepcopy(values or {})
        self.rendered = render(values, **kwargs)
        self.objects = documents(self.rendered)

    @property
    def notes(self) -> str:
        return next(text for name, text in self.rendered.items() if name.endswith("NOTES.txt"))

    def kinds(self) -> list[tuple[str, str]]:
        return sorted((o["kind"], o["metadata"]["name"]) for o in self.objects)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def settings(self) -> dict[str, Any]:
        """The operator's settings file, parsed."""
        (config_map,) = [c for c in self.all("ConfigMap") if "operator.yaml" in c.get("data", {})]
        return yaml.safe_load(config_map["data"]["operator.yaml"])

    def operator_container(self) -> dict[str, Any]:
        pod = self.one("Deployment")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        return container


@pytest.fixture(scope="session")
def renderings() -> dict[str, Rendering]:
    """Every value set of VALUE_SETS, rendered once."""
    return {name: Rendering(values) for name, values in VALUE_SETS.items()}


@pytest.fixture(scope="session")
def default(renderings: dict[str, Rendering]) -> Rendering:
    return renderings["defaults"]


def helm_error(values: dict[str, Any], **kwargs: Any) -> str:
    """The message of the error Helm raises for `values` (the test fails when it renders)."""
    try:
        render(values, **kwargs)
    except helm.HelmError as error:
        return str(error)
    raise AssertionError(f"the chart rendered with {json.dumps(values)}")
