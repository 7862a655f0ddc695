"""values.yaml and values.schema.json: every value is documented and changes what is rendered,
and bad values fail at install time (the schema, or the chart's own checks) with a message
that names the value."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import yaml

from conftest import CHART, documents, helm_error, render

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def schema_leaves(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the values the schema describes one by one (an object with `properties` is a
    section; anything else, including Kubernetes objects passed through, is one value)."""
    leaves = []
    for key, sub in schema["properties"].items():
        if key == "global":  # Helm's own, never in values.yaml
            continue
        if "properties" in sub:
            leaves += schema_leaves(sub, prefix + (key,))
        else:
            leaves.append(prefix + (key,))
    return leaves


LEAVES = schema_leaves(SCHEMA)


def lookup(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: Any = value
    for key in reversed(path):
        out = {key: out}
    return out


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def test_values_yaml_and_the_schema_describe_the_same_values():
    def keys(tree: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> None:
        declared = set(schema["properties"]) - {"global"}
        assert set(tree) == declared, f"{prefix or 'top level'}: values.yaml {sorted(tree)} " \
                                      f"but the schema {sorted(declared)}"
        for key, sub in schema["properties"].items():
            if "properties" in sub:
                keys(tree[key], sub, f"{prefix}{key}.")
    keys(VALUES, SCHEMA)
    # Every object of the schema refuses unknown keys (typos fail at install time).
    def closed(schema: dict[str, Any], path: str) -> None:
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, path
            for key, sub in schema["properties"].items():
                if key != "global":
                    closed(sub, f"{path}.{key}")
    closed(SCHEMA, "values")


def documented_keys(text: str) -> set[tuple[str, ...]]:
    """Paths of the keys of values.yaml that a `# --` comment documents (the helm-docs form):
    the comment block right above the key starts with `# --`."""
    found, stack, comment = set(), [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = re.match(r"^( *)([A-Za-z][\w]*):", line)
        if match:
            depth = len(match.group(1)) // 2
            stack = stack[:depth] + [match.group(2)]
            if comment and comment[0].startswith("# --"):
                found.add(tuple(stack))
        comment = []
    return found


def test_every_value_is_documented_in_values_yaml():
    documented = documented_keys((CHART / "values.yaml").read_text())
    missing = [".".join(leaf) for leaf in LEAVES if leaf not in documented]
    assert not missing, f"values without a `# --` comment: {missing}"


def test_every_value_has_a_description_in_the_schema():
    def walk(schema: dict[str, Any], path: str) -> None:
        for key, sub in schema["properties"].items():
            if key == "global":
                continue
            if "properties" in sub:
                walk(sub, f"{path}{key}.")
            else:
                assert sub.get("description"), f"{path}{key} has no description"
    walk(SCHEMA, "")


DIGEST = "sha256:" + "c" * 64
PEERS = [{"ipBlock": {"cidr": "192.0.2.0/24"}}]
MONITORS = {"metrics": {"serviceMonitor": {"enabled": True}}}
RULES = {"metrics": {"prometheusRule": {"enabled": True}}}
DASHBOARD = {"grafanaDashboard": {"enabled": True}}
WEBHOOK = {"gateway": {"records": {"webhook": {"url": "https://records.example.com/v1/calls"}}}}
AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}}
TOLERATIONS = [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]

# For every value: another valid value, and what else must be set for it to matter.
CHANGES: dict[str, tuple[Any, dict[str, Any]]] = {
    "nameOverride": ("voice", {}),
    "fullnameOverride": ("voice-edge", {}),
    "imagePullSecrets": (["registry-credentials"], {}),
    "operator.image.repository": ("registry.example/trunkline", {}),
    "operator.image.tag": ("0.2.0", {}),
    "operator.image.digest": (DIGEST, {}),
    "operator.image.pullPolicy": ("Always", {}),
    "operator.replicas": (3, {}),
    "operator.leaseName": ("voice-leader", {}),
    "operator.watchNamespace": ("trunks", {}),
    "operator.logLevel": ("debug", {}),
    "operator.logFormat": ("json", {}),
    "operator.serviceAccount.create": (False, {"operator": {"serviceAccount": {"name": "x"}}}),
    "operator.serviceAccount.name": ("voice-operator", {}),
    "operator.serviceAccount.annotations": ({"iam.example/role": "voice"}, {}),
    "operator.rbac.create": (False, {}),
    "operator.podAnnotations": ({"example.com/team": "voice"}, {}),
    "operator.podLabels": ({"team": "voice"}, {}),
    "operator.podSecurityContext": ({"runAsUser": 10001}, {}),
    "operator.securityContext": ({"runAsUser": 10001}, {}),
    "operator.resources": ({"limits": {"cpu": "1", "memory": "512Mi"}}, {}),
    "operator.nodeSelector": ({"kubernetes.io/os": "linux"}, {}),
    "operator.tolerations": (TOLERATIONS, {}),
    "operator.affinity": (AFFINITY, {}),
    "operator.priorityClassName": ("system-cluster-critical", {}),
    "operator.podDisruptionBudget.enabled": (False, {}),
    "operator.podDisruptionBudget.maxUnavailable": ("50%", {}),
    "gateway.name": ("edge", {}),
    "gateway.image.repository": ("registry.example/gateway", {}),
    "gateway.image.tag": ("0.2.0", {}),
    "gateway.image.digest": (DIGEST, {}),
    "gateway.image.pullPolicy": ("Always", {}),
    "gateway.mode": ("DaemonSet", {}),
    "gateway.replicas": (4, {}),
    "gateway.hostNetwork": (False, {"gateway": {"publicAddressFrom": "Pod"}}),
    "gateway.publicAddressFrom": ("Pod", {}),
    "gateway.nodeAddressAnnotation": ("example.com/public-ip", {}),
    "gateway.sipPort": (5070, {}),
    "gateway.tls.port": (5071, {}),
    "gateway.tls.secretName": ("sip-tls", {}),
    "gateway.internalPort": (5090, {}),
    "gateway.tls.caSecret": ("carrier-ca", {}),
    "gateway.agentNetworks": (["10.42.0.0/16", "fd00:42::/64"], {}),
    "gateway.agentCredentialsSecret": ("agent-runtime-credentials", {}),
    "gateway.agentUri": ("sip:agents.voice.svc.cluster.local:5070;transport=tcp", {}),
    "gateway.api.enabled": (True, {}),
    "gateway.api.port": (9443, {"gateway": {"api": {"enabled": True}}}),
    "gateway.api.tokenSecret": ("call-api-token", {"gateway": {"api": {"enabled": True}}}),
    "gateway.adminPort": (9091, {}),
    "gateway.rtpPorts": ("30000-30099", {}),
    "gateway.publicAddress": ("2001:db8::7", {"gateway": {"replicas": 1}}),
    "gateway.egressAddresses": (["198.51.100.8"], {}),
    "gateway.region": ("eu", {}),
    "gateway.credentialsSecret": ("voice-credentials", {}),
    "gateway.carrierService.type": ("NodePort", {}),
    "gateway.carrierService.annotations": ({"lb.example/internal": "false"}, {}),
    "gateway.carrierService.loadBalancerSourceRanges": (["203.0.113.0/24"], {}),
    "gateway.carrierService.externalTrafficPolicy": ("Cluster", {}),
    "gateway.carrierService.sessionAffinity": ("None", {}),
    "gateway.internalService.annotations": ({"lb.example/internal": "true"}, {}),
    "gateway.internalService.sessionAffinity": ("None", {}),
    "gateway.drainSeconds": (120, {}),
    "gateway.resources": ({"limits": {"memory": "1Gi"}}, {}),
    "gateway.nodeSelector": ({"trunkline.dev/edge": "true"}, {}),
    "gateway.tolerations": (TOLERATIONS, {}),
    "gateway.affinity": (AFFINITY, {}),
    "gateway.podAnnotations": ({"example.com/team": "voice"}, {}),
    "gateway.podLabels": ({"team": "voice"}, {}),
    "gateway.topologySpreadConstraints": ([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                             "whenUnsatisfiable": "ScheduleAnyway"}], {}),
    "gateway.priorityClassName": ("voice-critical", {}),
    "gateway.podDisruptionBudget.enabled": (False, {}),
    "gateway.podDisruptionBudget.maxUnavailable": ("25%", {}),
    "gateway.logLevel": ("trunkline=debug,info", {}),
    "gateway.logFormat": ("json", {}),
    "gateway.realm": ("voice.example", {}),
    "gateway.digestAlgorithms": (["SHA-256", "MD5"], {}),
    "gateway.nonceTtlSeconds": (120, {}),
    "gateway.agentTimeoutSeconds": (20, {}),
    "gateway.mediaTimeoutSeconds": (10, {}),
    "gateway.transferTimeoutSeconds": (25, {}),
    "gateway.maxCallDurationSeconds": (0, {}),
    "gateway.maxHoldSeconds": (600, {}),
    "gateway.minSessionExpiresSeconds": (300, {}),
    "gateway.guard.sourceInviteRate": (200, {}),
    "gateway.guard.sourceOptionsRate": (0, {}),
    "gateway.guard.sourceRequestRate": (5, {}),
    "gateway.guard.globalRequestRate": (5000, {}),
    "gateway.guard.maxSources": (4096, {}),
    "gateway.guard.authFailures": (3, {}),
    "gateway.guard.authFailureWindowSeconds": (120, {}),
    "gateway.guard.authLockoutSeconds": (900, {}),
    "gateway.guard.usernameFailures": (0, {}),
    "gateway.guard.usernameAttemptRate": (2, {}),
    "gateway.guard.nonceGuesses": (1, {}),
    "gateway.guard.refusalLogIntervalSeconds": (60, {}),
    "gateway.connections.max": (20000, {}),
    "gateway.connections.maxPerAddress": (400, {}),
    "gateway.connections.messageTimeoutSeconds": (5, {}),
    "gateway.connections.idleTimeoutSeconds": (120, {}),
    "gateway.connections.tlsHandshakeTimeoutSeconds": (3, {}),
    "gateway.connections.writeTimeoutSeconds": (4, {}),
    "gateway.records.stdout": (False, {}),
    "gateway.records.answered": (True, {}),
    "gateway.records.webhook.url": ("http://records.voice.svc:8080/in", {}),
    "gateway.records.webhook.keySecret.name": ("records-hmac", WEBHOOK),
    "gateway.records.webhook.keySecret.key": ("hmac", WEBHOOK),
    "gateway.records.webhook.caSecret.name": ("records-ca", WEBHOOK),
    "gateway.records.webhook.caSecret.key": ("bundle.pem", WEBHOOK),
    "gateway.records.spool.maxBytes": (268435456, WEBHOOK),
    "gateway.records.spool.volume": ({"persistentVolumeClaim": {"claimName": "spools"}}, WEBHOOK),
    "metrics.serviceMonitor.enabled": (True, {}),
    "metrics.serviceMonitor.interval": ("15s", MONITORS),
    "metrics.serviceMonitor.scrapeTimeout": ("5s", MONITORS),
    "metrics.serviceMonitor.labels": ({"release": "prometheus"}, MONITORS),
    "metrics.prometheusRule.enabled": (True, {}),
    "metrics.prometheusRule.labels": ({"release": "prometheus"}, RULES),
    "metrics.prometheusRule.pendingFor": ("30m", RULES),
    "metrics.prometheusRule.refusalsPerSecond": (5, RULES),
    "metrics.prometheusRule.authFailuresPerSecond": (2, RULES),
    "metrics.prometheusRule.rtpLossRatio": (0.05, RULES),
    "metrics.prometheusRule.rtpPortsUsedRatio": (0.95, RULES),
    "metrics.prometheusRule.recordsSpoolUsedRatio": (0.75, RULES),
    "grafanaDashboard.enabled": (True, {}),
    "grafanaDashboard.labels": ({"dashboards": "voice"}, DASHBOARD),
    "grafanaDashboard.annotations": ({"grafana_folder": "Voice"}, DASHBOARD),
    "grafanaDashboard.namespace": ("monitoring", DASHBOARD),
    "networkPolicy.enabled": (False, {}),
    "networkPolicy.carriers": (PEERS, {}),
    "networkPolicy.agents": (PEERS, {}),
    "networkPolicy.prometheus": (PEERS, {}),
}


def test_the_table_of_changes_covers_every_value():
    assert sorted(CHANGES) == sorted(".".join(leaf) for leaf in LEAVES)


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    return documents(render(values))


@pytest.mark.parametrize("path", sorted(CHANGES))
def test_every_value_changes_the_rendered_objects(path):
    value, base = CHANGES[path]
    leaf = tuple(path.split("."))
    assert lookup(VALUES, leaf) != value, "the change must differ from the default"
    before = manifests(base)
    after = manifests(merge(base, nested(leaf, value)))
    assert after != before, f"{path}={value!r} changes nothing the chart renders"


# Values the schema refuses, and a piece of Helm's message (it names the value).
SCHEMA_REJECTS = [
    ({"gateway": {"mode": "StatefulSet"}}, "/gateway/mode"),
    ({"gateway": {"tpye": "x"}}, "additional properties 'tpye' not allowed"),
    ({"gateway": {"carrierService": {"tpye": "NodePort"}}}, "'tpye' not allowed"),
    ({"gateway": {"carrierService": {"type": "Ingress"}}}, "/gateway/carrierService/type"),
    ({"gateway": {"carrierService": {"type": "ClusterIP",
                                     "loadBalancerSourceRanges": ["203.0.113.0/24"]}}},
     "/gateway/carrierService/loadBalancerSourceRanges"),
    ({"gateway": {"carrierService": {"loadBalancerSourceRanges": ["203.0.113.0"]}}},
     "/gateway/carrierService/loadBalancerSourceRanges/0"),
    ({"gateway": {"sipPort": 70000}}, "/gateway/sipPort"),
    ({"gateway": {"sipPort": "5060"}}, "/gateway/sipPort"),
    ({"gateway": {"replicas": -1}}, "/gateway/replicas"),
    ({"gateway": {"rtpPorts": "20000"}}, "/gateway/rtpPorts"),
    ({"gateway": {"publicAddress": "gateway.example"}}, "/gateway/publicAddress"),
    ({"gateway": {"egressAddresses": ["198.51.100.300"]}}, "/gateway/egressAddresses/0"),
    ({"gateway": {"tls": {"secretName": "Bad_Name"}}}, "/gateway/tls/secretName"),
    ({"gateway": {"name": "Trunk_Line"}}, "/gateway/name"),
    ({"gateway": {"name": "1fleet"}}, "/gateway/name"),
    ({"gateway": {"podDisruptionBudget": {"maxUnavailable": "half"}}},
     "/gateway/podDisruptionBudget/maxUnavailable"),
    ({"gateway": {"logLevel": ""}}, "/gateway/logLevel"),
    ({"gateway": {"resources": {"limit": {"memory": "1Gi"}}}}, "/gateway/resources"),
    ({"gateway": {"image": {"pullPolicy": "Sometimes"}}}, "/gateway/image/pullPolicy"),
    ({"operator": {"image": {"digest": "latest"}}}, "/operator/image/digest"),
    ({"operator": {"replicas": "two"}}, "/operator/replicas"),
    ({"operator": {"image": {"repository": ""}}}, "/operator/image/repository"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
    ({"metrics": {"prometheusRule": {"pendingFor": "ten"}}}, "/metrics/prometheusRule/pendingFor"),
    ({"metrics": {"prometheusRule": {"rtpLossRatio": 2}}}, "/metrics/prometheusRule/rtpLossRatio"),
    ({"metrics": {"prometheusRule": {"refusalsPerSecond": "1"}}},
     "/metrics/prometheusRule/refusalsPerSecond"),
    ({"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}},
     "/grafanaDashboard/labels/grafana_dashboard"),
    ({"grafanaDashboard": {"namespace": "Monitoring"}}, "/grafanaDashboard/namespace"),
    ({"grafanaDashboard": {"enable": True}}, "additional properties 'enable' not allowed"),
    ({"networkPolicy": {"carriers": [{"cidr": "203.0.113.0/24"}]}},
     "/networkPolicy/carriers/0"),
    ({"imagePullSecrets": [{"name": "registry"}]}, "/imagePullSecrets/0"),
    ({"gateway": {"publicAddressFrom": "LoadBalancer"}}, "/gateway/publicAddressFrom"),
    ({"gateway": {"digestAlgorithms": ["MD5", "MD5"]}}, "/gateway/digestAlgorithms"),
    ({"gateway": {"digestAlgorithms": ["MD5-sess"]}}, "/gateway/digestAlgorithms/0"),
    ({"gateway": {"realm": 'a"b'}}, "/gateway/realm"),
    ({"gateway": {"mediaTimeoutSeconds": 0}}, "/gateway/mediaTimeoutSeconds"),
    ({"gateway": {"transferTimeoutSeconds": 0}}, "/gateway/transferTimeoutSeconds"),
    ({"gateway": {"logFormat": "yaml"}}, "/gateway/logFormat"),
    # Security limits: RFC 4028's Min-SE floor, no zero where it means nothing, whole numbers,
    # no unknown key.
    ({"gateway": {"minSessionExpiresSeconds": 30}}, "/gateway/minSessionExpiresSeconds"),
    ({"gateway": {"maxCallDurationSeconds": -1}}, "/gateway/maxCallDurationSeconds"),
    ({"gateway": {"maxHoldSeconds": "1h"}}, "/gateway/maxHoldSeconds"),
    ({"gateway": {"guard": {"maxSources": 0}}}, "/gateway/guard/maxSources"),
    ({"gateway": {"guard": {"authLockoutSeconds": 0}}}, "/gateway/guard/authLockoutSeconds"),
    ({"gateway": {"guard": {"authFailureWindowSeconds": 0}}},
     "/gateway/guard/authFailureWindowSeconds"),
    ({"gateway": {"guard": {"usernameAttemptRate": 0}}}, "/gateway/guard/usernameAttemptRate"),
    ({"gateway": {"guard": {"nonceGuesses": 0}}}, "/gateway/guard/nonceGuesses"),
    ({"gateway": {"guard": {"refusalLogIntervalSeconds": 0}}},
     "/gateway/guard/refusalLogIntervalSeconds"),
    ({"gateway": {"guard": {"sourceInviteRate": 2.5}}}, "/gateway/guard/sourceInviteRate"),
    ({"gateway": {"guard": {"lockoutSeconds": 60}}}, "additional properties 'lockoutSeconds' not allowed"),
    ({"gateway": {"connections": {"max": 0}}}, "/gateway/connections/max"),
    ({"gateway": {"connections": {"maxPerAddress": 0}}}, "/gateway/connections/maxPerAddress"),
    ({"gateway": {"connections": {"messageTimeoutSeconds": 0}}},
     "/gateway/connections/messageTimeoutSeconds"),
    ({"gateway": {"connections": {"idleTimeoutSeconds": 0}}},
     "/gateway/connections/idleTimeoutSeconds"),
    ({"gateway": {"connections": {"tlsHandshakeTimeoutSeconds": 0}}},
     "/gateway/connections/tlsHandshakeTimeoutSeconds"),
    ({"gateway": {"connections": {"writeTimeoutSeconds": 0}}},
     "/gateway/connections/writeTimeoutSeconds"),
    ({"gateway": {"connections": {"maxPerAdress": 10}}},
     "additional properties 'maxPerAdress' not allowed"),
    ({"gateway": {"connections": {"max": 5000000000}}}, "/gateway/connections/max"),
    ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
    # Outbound calls: agent networks are CIDRs, and at least one.
    ({"gateway": {"agentNetworks": ["10.0.0.0/33"]}}, "/gateway/agentNetworks/0"),
    ({"gateway": {"agentNetworks": ["10.1.2.3"]}}, "/gateway/agentNetworks/0"),
    ({"gateway": {"agentNetworks": ["10.0.0.0/8", "pods"]}}, "/gateway/agentNetworks/1"),
    ({"gateway": {"agentNetworks": []}}, "/gateway/agentNetworks"),
    ({"gateway": {"agentNetworks": "10.0.0.0/8"}}, "/gateway/agentNetworks"),
    ({"gateway": {"agentNetworks": ["10.0.0.0/8", "10.0.0.0/8"]}}, "/gateway/agentNetworks"),
    ({"gateway": {"agentUri": "agents.voice.svc:5070"}}, "/gateway/agentUri"),
    ({"gateway": {"agentCredentialsSecret": "Agent_Creds"}}, "/gateway/agentCredentialsSecret"),
    ({"gateway": {"tls": {"caSecret": "CA"}}}, "/gateway/tls/caSecret"),
    ({"gateway": {"api": {"enable": True}}}, "additional properties 'enable' not allowed"),
    ({"gateway": {"api": {"port": 0}}}, "/gateway/api/port"),
    ({"gateway": {"api": {"enabled": "yes"}}}, "/gateway/api/enabled"),
    ({"gateway": {"api": {"tokenSecret": "Token!"}}}, "/gateway/api/tokenSecret"),
    ({"gateway": {"topologySpreadConstraints": [{"maxSkew": 0, "topologyKey": "zone",
                                                 "whenUnsatisfiable": "DoNotSchedule"}]}},
     "/gateway/topologySpreadConstraints/0/maxSkew"),
    # Session records: a webhook the gateway can POST to, Secret names and keys, a spool of at
    # least 1 MiB on an emptyDir or a claim, nothing else.
    ({"gateway": {"records": {"stdout": "yes"}}}, "/gateway/records/stdout"),
    ({"gateway": {"records": {"file": "/var/log/records"}}}, "additional properties 'file' not allowed"),
    ({"gateway": {"records": {"webhook": {"url": "ftp://records.example.com/"}}}},
     "/gateway/records/webhook/url"),
    ({"gateway": {"records": {"webhook": {"url": "records.example.com/in"}}}},
     "/gateway/records/webhook/url"),
    ({"gateway": {"records": {"webhook": {"url": "https://user:password@records.example.com/"}}}},
     "/gateway/records/webhook/url"),
    ({"gateway": {"records": {"webhook": {"url": "https://records.example.com/a b"}}}},
     "/gateway/records/webhook/url"),
    ({"gateway": {"records": {"webhook": {"url": "https://:8443/in"}}}},
     "/gateway/records/webhook/url"),
    ({"gateway": {"records": {"webhook": {"keySecret": {"name": "Records_Key"}}}}},
     "/gateway/records/webhook/keySecret/name"),
    ({"gateway": {"records": {"webhook": {"keySecret": {"key": "a/b"}}}}},
     "/gateway/records/webhook/keySecret/key"),
    ({"gateway": {"records": {"webhook": {"caSecret": {"key": ".."}}}}},
     "/gateway/records/webhook/caSecret/key"),
    ({"gateway": {"records": {"webhook": {"caSecret": {"secretName": "ca"}}}}},
     "additional properties 'secretName' not allowed"),
    ({"gateway": {"records": {"spool": {"maxBytes": 1048575}}}}, "/gateway/records/spool/maxBytes"),
    ({"gateway": {"records": {"spool": {"maxBytes": "1Gi"}}}}, "/gateway/records/spool/maxBytes"),
    ({"gateway": {"records": {"spool": {"volume": {"hostPath": {"path": "/var/spool"}}}}}},
     "/gateway/records/spool/volume"),
    ({"gateway": {"records": {"spool": {"volume": {"emptyDir": {"medium": "Memory"}}}}}},
     "/gateway/records/spool/volume/emptyDir"),
    ({"gateway": {"records": {"spool": {"volume": {"persistentVolumeClaim": {}}}}}},
     "/gateway/records/spool/volume/persistentVolumeClaim"),
    ({"gateway": {"records": {"spool": {"volume": {"persistentVolumeClaim": {
        "claimName": "Spools"}}}}}},
     "/gateway/records/spool/volume/persistentVolumeClaim/claimName"),
]


@pytest.mark.parametrize("values,message", SCHEMA_REJECTS,
                         ids=[json.dumps(v, separators=(",", ":")) for v, _ in SCHEMA_REJECTS])
def test_the_schema_refuses_bad_values_at_install_time(values, message):
    error = helm_error(values)
    assert "values don't meet the specifications of the schema" in error, error
    assert message in error, error


# Values that pass the schema but that the operator would refuse: the chart fails instead.
CHART_REJECTS = [
    ({"gateway": {"adminPort": 5060}}, "gateway.adminPort: port 5060 is already gateway.sipPort"),
    ({"gateway": {"tls": {"secretName": "sip-tls", "port": 5080}}},
     "gateway.internalPort: port 5080 is already gateway.tls.port"),
    ({"gateway": {"internalPort": 20010}},
     "gateway.internalPort: port 20010 is inside gateway.rtpPorts 20000-20999"),
    ({"gateway": {"api": {"enabled": True, "port": 9090}}},
     "gateway.api.port: port 9090 is already gateway.adminPort"),
    ({"gateway": {"api": {"enabled": True, "port": 5080}}},
     "gateway.api.port: port 5080 is already gateway.internalPort"),
    ({"gateway": {"agentNetworks": ["10.0.0.0/8", "192.168.1.5/16"]}},
     'gateway.agentNetworks[1]: "192.168.1.5/16" has host bits set'),
    ({"gateway": {"rtpPorts": "20001-20999"}}, "LOW must be even and below HIGH"),
    ({"gateway": {"rtpPorts": "20000-20000"}}, "LOW must be even and below HIGH"),
    ({"operator": {"serviceAccount": {"create": False}}}, "operator.serviceAccount.name is required"),
    # Media paths that cannot carry audio (OperatorSettings::media_path refuses them too).
    ({"gateway": {"publicAddress": "203.0.113.10", "replicas": 3, "hostNetwork": False}},
     "gateway.publicAddressFrom: Fixed: one address reaches one gateway, but replicas is 3"),
    ({"gateway": {"publicAddress": "203.0.113.10", "mode": "DaemonSet"}},
     "but a DaemonSet runs one gateway per node"),
    ({"gateway": {"hostNetwork": False}},
     "gateway.publicAddressFrom: Node: a node's address reaches the gateway only on the host network"),
    ({"gateway": {"publicAddressFrom": "Fixed", "replicas": 1}},
     "gateway.publicAddress: publicAddressFrom: Fixed needs the address"),
    ({"gateway": {"publicAddressFrom": "Pod", "publicAddress": "203.0.113.10"}},
     "gateway.publicAddress: one fixed address is advertised only with publicAddressFrom: Fixed"),
    # A per-address connection cap above the global one caps nothing.
    ({"gateway": {"connections": {"max": 50}}},
     "gateway.connections.maxPerAddress: 100 is above gateway.connections.max 50: one address "
     "could take every connection"),
    # Session records: a Secret for a webhook that is not there, a CA no TLS would use.
    ({"gateway": {"records": {"webhook": {"keySecret": {"name": "records-hmac"}}}}},
     "gateway.records.webhook.keySecret.name: a Secret for no webhook: set "
     "gateway.records.webhook.url"),
    ({"gateway": {"records": {"webhook": {"caSecret": {"name": "records-ca"}}}}},
     "gateway.records.webhook.caSecret.name: a Secret for no webhook"),
    ({"gateway": {"records": {"webhook": {"url": "http://records.voice.svc/in",
                                          "caSecret": {"name": "records-ca"}}}}},
     "gateway.records.webhook.caSecret.name: a CA is used only toward an https:// webhook"),
]


@pytest.mark.parametrize("values,message", CHART_REJECTS,
                         ids=[json.dumps(v, separators=(",", ":")) for v, _ in CHART_REJECTS])
def test_the_chart_refuses_values_the_operator_would_refuse(values, message):
    assert message in helm_error(values)


def test_without_tls_its_port_collides_with_nothing():
    render({"gateway": {"tls": {"port": 5080}}})


def test_a_release_name_that_is_no_fleet_name_asks_for_gateway_name():
    assert "set gateway.name" in helm_error({}, release="1st")
    render({"gateway": {"name": "first"}}, release="1st")


@pytest.mark.parametrize("address", ["198.51.100.7", "2001:db8::7", "::1", "::ffff:198.51.100.7"])
def test_ipv4_and_ipv6_addresses_pass_the_schema(address):
    settings = render({"gateway": {"publicAddress": address, "replicas": 1,
                                   "egressAddresses": [address]}})
    assert address in settings["trunkline/templates/configmap.yaml"]


@pytest.mark.parametrize("cidr", ["203.0.113.0/24", "0.0.0.0/0", "2001:db8::/32", "::/0"])
def test_ipv4_and_ipv6_source_ranges_pass_the_schema(cidr):
    render({"gateway": {"carrierService": {"loadBalancerSourceRanges": [cidr]}}})


def test_a_disabled_api_binds_no_port_so_its_port_collides_with_nothing():
    render({"gateway": {"api": {"port": 9090}}})


@pytest.mark.parametrize("cidr", ["10.42.0.0/16", "0.0.0.0/0", "10.1.2.3/32", "fd00::/8",
                                  "2001:db8::/32", "::1/128", "::/0"])
def test_ipv4_and_ipv6_agent_networks_pass_the_schema_and_reach_the_settings(cidr):
    rendered = render({"gateway": {"agentNetworks": [cidr]}})
    settings = yaml.safe_load(yaml.safe_load(rendered["trunkline/templates/configmap.yaml"])[
        "data"]["operator.yaml"])
    assert settings["agentNetworks"] == [cidr]


@pytest.mark.parametrize("url", ["http://records.voice.svc:8080/v1/calls",
                                 "https://records.example.com", "https://[2001:db8::7]:8443/in",
                                 "https://records.example.com/in?source=trunkline"])
def test_http_and_https_webhooks_pass_the_schema_and_reach_the_settings(url):
    rendered = render({"gateway": {"records": {"webhook": {"url": url}}}})
    settings = yaml.safe_load(yaml.safe_load(rendered["trunkline/templates/configmap.yaml"])[
        "data"]["operator.yaml"])
    assert settings["records"]["webhook"]["url"] == url


def test_the_chart_readmes_security_example_installs_and_reaches_the_settings():
    text = (CHART / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "guard:" in b]
    values = yaml.safe_load(block)
    settings = yaml.safe_load(yaml.safe_load(render(values)["trunkline/templates/configmap.yaml"])[
        "data"]["operator.yaml"])
    for section in ("guard", "connections"):
        for key, value in values["gateway"].get(section, {}).items():
            assert settings[section][key] == value, (section, key)
    assert settings["maxCallDurationSeconds"] == values["gateway"]["maxCallDurationSeconds"]
