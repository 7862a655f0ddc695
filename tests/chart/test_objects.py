"""What the chart renders: the objects, the operator's pod, its RBAC, its settings file, the
monitors and the NetworkPolicies, for the defaults and for the value sets of conftest.py."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from conftest import CHART, NAMESPACE, REPO, RELEASE, VALUE_SETS, Rendering, render


def merge_values(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """`b` over `a`, map by map, as Helm merges values files."""
    out = copy.deepcopy(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = value
    return out

OPERATOR = f"{RELEASE}-operator"
GATEWAY_READER = f"{RELEASE}-gateway-reader"


def test_the_defaults_render_the_operator_its_rbac_and_policies_and_nothing_optional(default):
    assert default.kinds() == sorted([
        ("ClusterRole", OPERATOR),
        ("ClusterRole", GATEWAY_READER),
        ("ClusterRoleBinding", OPERATOR),
        ("ClusterRoleBinding", GATEWAY_READER),
        ("ConfigMap", OPERATOR),
        ("Deployment", OPERATOR),
        # Zones: on by default (the agent-facing and admin ports from their peers only).
        ("NetworkPolicy", f"{RELEASE}-gateway"),
        ("NetworkPolicy", OPERATOR),
        ("PodDisruptionBudget", OPERATOR),
        ("Role", OPERATOR),
        ("RoleBinding", OPERATOR),
        ("Service", OPERATOR),
        ("ServiceAccount", OPERATOR),
    ])
    for obj in default.objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_every_value_set_renders_distinct_objects(renderings):
    for name, rendering in renderings.items():
        kinds = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
                 for o in rendering.objects]
        assert len(kinds) == len(set(kinds)), f"{name}: an object is rendered twice: {kinds}"


def test_watching_the_release_namespace_renders_one_operator_role_with_every_rule():
    """operator.watchNamespace equal to the release namespace once rendered two Roles of one
    name there (the second replacing the first): now one Role holds both sets of rules."""
    r = Rendering({"operator": {"watchNamespace": NAMESPACE}})
    kinds = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in r.objects]
    assert len(kinds) == len(set(kinds)), kinds
    role = next(o for o in r.all("Role") if o["metadata"]["name"] == OPERATOR)
    granted = permissions(role)
    assert ("", "secrets", "*", "create") in granted
    assert ("trunkline.dev", "inboundtrunks/status", "*", "patch") in granted
    assert ("apps", "deployments", "*", "patch") in granted


# --- The operator's pod ---------------------------------------------------------------------


def test_the_operator_runs_the_operator_command_with_its_settings_file(default):
    container = default.operator_container()
    assert container["image"] == "ghcr.io/trunkline/trunkline:0.1.0"
    assert "command" not in container  # the image's ENTRYPOINT is the trunkline binary
    assert container["args"] == [
        "operator", "--config", "/etc/trunkline/operator.yaml", "--admin", "0.0.0.0:8080",
        "--lease-name", "trunkline-operator", "--log-format", "text",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["RUST_LOG"]["value"] == "info"
    assert container["volumeMounts"] == [
        {"name": "settings", "mountPath": "/etc/trunkline", "readOnly": True}
    ]
    pod = default.one("Deployment")["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "settings", "configMap": {"name": OPERATOR}}]


def test_the_operator_probes_and_metrics_use_the_admin_port(default):
    container = default.operator_container()
    assert container["ports"] == [{"name": "admin", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    service = default.one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "admin", "port": 8080, "targetPort": "admin", "protocol": "TCP"}
    ]


def test_the_operator_pod_is_locked_down(default):
    deployment = default.one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = default.operator_container()
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "runAsUser": 65532, "runAsGroup": 65532, "capabilities": {"drop": ["ALL"]},
    }
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}
    # The token is mounted in the operator pod only, which talks to the API server.
    assert default.one("ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == OPERATOR
    assert "hostNetwork" not in pod


def test_the_operator_is_leader_elected_over_two_replicas_spread_over_nodes(default):
    deployment = default.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/name": "trunkline", "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "operator",
    }
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    budget = default.one("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == selector
    assert budget["spec"]["maxUnavailable"] == 1


def test_a_changed_fleet_restarts_the_operator_which_reads_its_settings_once(default):
    changed = Rendering({"gateway": {"replicas": 5}})
    checksum = lambda r: r.one("Deployment")["spec"]["template"]["metadata"]["annotations"][
        "checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", checksum(default))
    assert checksum(changed) != checksum(default)


def test_one_replica_has_no_operator_budget_and_flags_follow_the_values(renderings):
    r = renderings["private-registry-single-namespace"]
    assert not r.all("PodDisruptionBudget")
    container = r.operator_container()
    assert container["image"] == "registry.example/voice/trunkline@sha256:" + "a" * 64
    assert container["imagePullPolicy"] == "Always"
    assert container["args"][-6:] == [
        "--lease-name", "voice-leader", "--log-format", "text", "--watch-namespace", "trunks"]
    assert {e["name"]: e.get("value") for e in container["env"]}["RUST_LOG"] == (
        "trunkline=debug,info")
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    settings = r.settings()
    assert settings["name"] == "edge"
    assert settings["image"] == "registry.example/voice/trunkline@sha256:" + "a" * 64
    assert settings["imagePullPolicy"] == "Always"
    assert settings["imagePullSecrets"] == ["registry-credentials"]
    assert settings["credentialsSecret"] == "edge-gateway-credentials"


def test_the_gateway_image_takes_each_unset_field_from_the_operator_image():
    settings = Rendering({"operator": {"image": {"tag": "0.2.0"}}}).settings()
    assert settings["image"] == "ghcr.io/trunkline/trunkline:0.2.0"
    settings = Rendering({"gateway": {"image": {"repository": "registry.example/gw"}}}).settings()
    assert settings["image"] == "registry.example/gw:0.1.0"
    settings = Rendering({
        "operator": {"image": {"digest": "sha256:" + "b" * 64}},
        "gateway": {"image": {"tag": "0.3.0", "pullPolicy": "Never"}},
    }).settings()
    assert (settings["image"], settings["imagePullPolicy"]) == (
        "ghcr.io/trunkline/trunkline:0.3.0", "Never")


# --- RBAC -----------------------------------------------------------------------------------

Permission = tuple[str, str, str, str]  # (apiGroup, resource, resourceName or "*", verb)


def permissions(role: dict[str, Any]) -> set[Permission]:
    """A Role's or ClusterRole's rules, one (group, resource, name, verb) per permission."""
    out = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "resourceNames", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or ["*"]:
                    for verb in rule["verbs"]:
                        out.add((group, resource, name, verb))
    return out


def grid(groups, resources, verbs, names=("*",)) -> set[Permission]:
    return {(g, r, n, v) for g in groups for r in resources for n in names for v in verbs}


KINDS = ("inboundtrunks", "outboundtrunks", "transferdestinations")
OWNED = ("get", "list", "watch", "create", "patch", "delete")


WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "escalate", "bind",
               "impersonate", "*"}


def test_the_operator_cluster_role_grants_exactly_what_the_operator_does(default):
    assert permissions(default.one("ClusterRole", OPERATOR)) == (
        grid(["trunkline.dev"], KINDS, ["get", "list", "watch"])
        | grid(["trunkline.dev"], [f"{k}/status" for k in KINDS], ["get", "patch"])
        | grid([""], ["secrets"], ["get", "list", "watch", "create", "patch"])
        | grid(["", "events.k8s.io"], ["events"], ["create", "patch"])
        # The gateways' nodes, to check the address each reports (publicAddressFrom Node).
        | grid([""], ["nodes"], ["get"])
        # Only the clean-up of what operators before 0.2 made, by name.
        | grid(["rbac.authorization.k8s.io"], ["clusterroles", "clusterrolebindings"],
               ["get", "delete"], names=["trunkline-gateway"])
    )


def test_the_operator_cannot_create_bind_or_escalate_any_cluster_role(renderings):
    for name, r in renderings.items():
        for role in r.all("ClusterRole") + r.all("Role"):
            if role["metadata"]["name"] != OPERATOR:
                continue
            for group, resource, rname, verb in permissions(role):
                if resource in ("clusterroles", "clusterrolebindings"):
                    assert verb in ("get", "delete") and rname != "*", (name, resource, verb)
                assert verb not in ("escalate", "bind", "impersonate", "*"), (name, resource)


def test_the_operator_role_is_confined_to_the_fleet_namespace(default):
    role = default.one("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert permissions(role) == (
        grid(["apps"], ["deployments", "daemonsets"], OWNED)
        | grid([""], ["services", "serviceaccounts"], OWNED)
        | grid(["rbac.authorization.k8s.io"], ["roles", "rolebindings"], OWNED)
        | grid(["policy"], ["poddisruptionbudgets"], OWNED)
        # Read only: the gateways report over their admin endpoint, nobody patches a pod.
        | grid([""], ["pods"], ["get", "list", "watch"])
        | grid(["coordination.k8s.io"], ["leases"], ["create"])
        | grid(["coordination.k8s.io"], ["leases"], ["get", "patch"], names=["trunkline-operator"])
    )


def test_with_a_watched_namespace_the_operator_sees_secrets_only_there():
    r = Rendering({"operator": {"watchNamespace": "trunks"}})
    cluster = permissions(r.one("ClusterRole", OPERATOR))
    assert not any(p[1] in ("secrets", "events") or p[0] == "trunkline.dev" for p in cluster)
    assert ("", "nodes", "*", "get") in cluster
    watched = next(
        o for o in r.all("Role") if o["metadata"]["namespace"] == "trunks"
        and o["metadata"]["name"] == OPERATOR)
    assert permissions(watched) == (
        grid(["trunkline.dev"], KINDS, ["get", "list", "watch"])
        | grid(["trunkline.dev"], [f"{k}/status" for k in KINDS], ["get", "patch"])
        | grid([""], ["secrets"], ["get", "list", "watch", "create", "patch"])
        | grid(["", "events.k8s.io"], ["events"], ["create", "patch"])
    )
    # The bundle Secret lives in the release namespace: Secrets there, and nowhere else.
    release = next(o for o in r.all("Role") if o["metadata"]["namespace"] == NAMESPACE
                   and o["metadata"]["name"] == OPERATOR)
    assert ("", "secrets", "*", "create") in permissions(release)
    binding = next(o for o in r.all("RoleBinding") if o["metadata"]["namespace"] == "trunks"
                   and o["metadata"]["name"] == OPERATOR)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]
    # ... and the gateways get the same namespace.
    assert r.settings()["watchNamespace"] == "trunks"


def test_the_bindings_give_the_roles_to_the_operator_service_account(default):
    subject = [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]
    binding = default.one("ClusterRoleBinding", OPERATOR)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR}
    assert binding["subjects"] == subject
    binding = default.one("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR}
    assert binding["subjects"] == subject


# --- The gateways' permissions --------------------------------------------------------------

GATEWAY_SUBJECT = [{"kind": "ServiceAccount", "name": f"{RELEASE}-gateway",
                    "namespace": NAMESPACE}]


def gateway_chart_permissions(r: Rendering) -> dict[str, set[Permission]]:
    """What the chart grants the gateways' ServiceAccount, by namespace ("" cluster-wide)."""
    granted: dict[str, set[Permission]] = {}
    for binding in r.all("ClusterRoleBinding") + r.all("RoleBinding"):
        if binding["subjects"] != GATEWAY_SUBJECT:
            continue
        namespace = binding["metadata"].get("namespace", "")
        ref = binding["roleRef"]
        role = next(o for o in r.all(ref["kind"]) if o["metadata"]["name"] == ref["name"]
                    and o["metadata"].get("namespace", "") == namespace)
        granted.setdefault(namespace, set()).update(permissions(role))
    return granted


def test_the_gateways_read_the_three_kinds_and_their_node_and_write_nothing(default):
    assert gateway_chart_permissions(default) == {
        "": grid(["trunkline.dev"], KINDS, ["get", "list", "watch"])
        | grid([""], ["nodes"], ["get"])}


def test_gateways_advertising_their_pod_ip_cannot_read_nodes(renderings):
    r = renderings["pod-addresses"]
    assert gateway_chart_permissions(r) == {
        "": grid(["trunkline.dev"], KINDS, ["get", "list", "watch"])}
    # Nor the operator: it checks a reported address against the pod's own IPs.
    assert not any(p[1] == "nodes" for p in permissions(r.one("ClusterRole", OPERATOR)))


def test_with_a_watched_namespace_the_gateways_read_trunks_only_there():
    r = Rendering({"operator": {"watchNamespace": "trunks"}})
    assert gateway_chart_permissions(r) == {
        "": grid([""], ["nodes"], ["get"]),
        "trunks": grid(["trunkline.dev"], KINDS, ["get", "list", "watch"])}
    r = Rendering({"operator": {"watchNamespace": "trunks"},
                   "gateway": {"hostNetwork": False, "publicAddressFrom": "Pod"}})
    assert gateway_chart_permissions(r) == {
        "trunks": grid(["trunkline.dev"], KINDS, ["get", "list", "watch"])}
    assert not r.all("ClusterRoleBinding") or all(
        b["subjects"] != GATEWAY_SUBJECT for b in r.all("ClusterRoleBinding"))


def test_a_compromised_gateway_can_change_nothing():
    """Everything the gateways' ServiceAccount is granted, by the chart and by the fleet the
    operator renders (tests/golden/fleet), is a read: no write verb on any object, so no patch
    of the operator's pods, no Lease, no Secret."""
    objects = golden_fleet_objects()
    if not objects:
        pytest.skip("tests/golden/fleet/ (the operator's fleet renderings) is not in this tree")
    roles = [o for o in objects if o["kind"] == "Role"]
    assert roles, "the fleet renders the gateways' Role"
    for role in roles:
        for group, resource, name, verb in permissions(role):
            assert verb not in WRITE_VERBS, (role["metadata"]["name"], resource, verb)
            assert (resource, name) == ("secrets", role_secret_name(role)), (resource, name)
    for values in [{}, {"operator": {"watchNamespace": "trunks"}}]:
        for namespace, granted in gateway_chart_permissions(Rendering(values)).items():
            for permission in granted:
                assert permission[3] not in WRITE_VERBS, (namespace, permission)


def role_secret_name(role: dict[str, Any]) -> str:
    (rule,) = role["rules"]
    (name,) = rule["resourceNames"]
    return name


def holds(granted: set[Permission], wanted: Permission) -> bool:
    group, resource, name, verb = wanted
    return (group, resource, "*", verb) in granted or (
        name != "*" and (group, resource, name, verb) in granted)


def test_the_operator_holds_what_it_grants_the_gateways():
    """Kubernetes lets the operator create the gateways' Role only when it holds every
    permission in it itself (RBAC escalation prevention): the one Secret, read-only."""
    objects = [o for o in golden_fleet_objects() if o["kind"] == "Role"]
    if not objects:
        pytest.skip("tests/golden/fleet/ (the operator's fleet renderings) is not in this tree")
    for role in objects:
        namespace = role["metadata"]["namespace"]
        for values in [{}, {"operator": {"watchNamespace": "trunks"}}]:
            r = Rendering(values, namespace=namespace)
            granted = permissions(r.one("ClusterRole", OPERATOR)) | permissions(next(
                o for o in r.all("Role") if o["metadata"]["namespace"] == namespace))
            for wanted in permissions(role):
                assert holds(granted, wanted), (values, wanted)


def test_the_lease_and_legacy_role_names_follow_the_fleet_name():
    r = Rendering({"gateway": {"name": "edge"}})
    assert ("coordination.k8s.io", "leases", "edge-operator", "patch") in permissions(
        r.one("Role"))
    assert ("rbac.authorization.k8s.io", "clusterroles", "edge-gateway", "delete") in permissions(
        r.one("ClusterRole", OPERATOR))
    assert r.one("ClusterRoleBinding", "edge-gateway-reader")["subjects"] == [
        {"kind": "ServiceAccount", "name": "edge-gateway", "namespace": NAMESPACE}]
    assert r.operator_container()["args"][5:9] == [
        "--lease-name", "edge-operator", "--log-format", "text"]


# The plural of each kind the operator renders for the fleet.
RESOURCE_OF_KIND = {
    "ServiceAccount": ("", "serviceaccounts"), "Service": ("", "services"),
    "Deployment": ("apps", "deployments"), "DaemonSet": ("apps", "daemonsets"),
    "Role": ("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
}


def golden_fleet_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted((REPO / "tests" / "golden" / "fleet").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") in RESOURCE_OF_KIND:
                objects.append(document)
    return objects


def test_the_operator_may_apply_and_delete_every_fleet_object_it_renders():
    """Cross-checks the chart's RBAC with operator::fleet's golden renderings, when present."""
    objects = golden_fleet_objects()
    if not objects:
        pytest.skip("tests/golden/fleet/ (the operator's fleet renderings) is not in this tree")
    for obj in objects:
        fleet = obj["metadata"]["labels"]["trunkline.dev/fleet"]
        namespace = obj["metadata"].get("namespace")
        r = Rendering({"gateway": {"name": fleet}}, namespace=namespace)
        granted = permissions(r.one("ClusterRole", OPERATOR)) | permissions(r.one("Role"))
        group, resource = RESOURCE_OF_KIND[obj["kind"]]
        for verb in ("get", "create", "patch", "delete", "list", "watch"):
            assert holds(granted, (group, resource, obj["metadata"]["name"], verb)), (
                f"{obj['kind']} {obj['metadata']['name']}: the operator may not {verb} it")
        # Owner references (the tracker sets them) need nothing more: the operator may read
        # its own Deployment.
        assert holds(granted, ("apps", "deployments", f"{RELEASE}-operator", "get"))


# --- The settings file ----------------------------------------------------------------------

# The keys of operator::settings::OperatorSettings and of its nested structs.
SETTINGS_KEYS = {
    "name", "namespace", "image", "imagePullPolicy", "imagePullSecrets", "mode", "replicas",
    "hostNetwork", "sipPort", "tls", "internalPort", "agentNetworks", "agentCredentialsSecret",
    "agentUri", "api", "adminPort", "rtpPorts",
    "publicAddressFrom", "publicAddress", "nodeAddressAnnotation", "egressAddresses", "region",
    "watchNamespace", "operatorDeployment", "credentialsSecret", "carrierService",
    "internalService", "drainSeconds", "resources", "nodeSelector", "tolerations", "affinity",
    "podAnnotations", "podLabels", "topologySpreadConstraints", "priorityClassName",
    "podDisruptionBudget", "logLevel", "logFormat", "realm", "digestAlgorithms",
    "nonceTtlSeconds", "agentTimeoutSeconds", "mediaTimeoutSeconds", "transferTimeoutSeconds",
    "maxCallDurationSeconds", "maxHoldSeconds", "minSessionExpiresSeconds", "guard",
    "connections", "records",
}
NESTED_SETTINGS_KEYS = {
    "tls": {"port", "secretName", "caSecret"},
    "api": {"enabled", "port", "tokenSecret"},
    "carrierService": {"type", "annotations", "loadBalancerSourceRanges",
                       "externalTrafficPolicy", "sessionAffinity"},
    "internalService": {"annotations", "sessionAffinity"},
    "podDisruptionBudget": {"enabled", "maxUnavailable"},
    "records": {"stdout", "answered", "webhook", "spool"},
    "guard": {"sourceInviteRate", "sourceOptionsRate", "sourceRequestRate", "globalRequestRate",
              "maxSources", "authFailures", "authFailureWindowSeconds", "authLockoutSeconds",
              "usernameFailures", "usernameAttemptRate", "nonceGuesses",
              "refusalLogIntervalSeconds"},
    "connections": {"max", "maxPerAddress", "messageTimeoutSeconds", "idleTimeoutSeconds",
                    "tlsHandshakeTimeoutSeconds", "writeTimeoutSeconds"},
}
RUST_STRUCT_OF = {
    None: "OperatorSettings", "tls": "TlsSettings", "api": "ApiSettings",
    "carrierService": "CarrierServiceSettings",
    "internalService": "InternalServiceSettings", "podDisruptionBudget": "PodDisruptionBudgetSettings",
    "records": "RecordsSettings", "guard": "SourceGuardSettings",
    "connections": "ConnectionSettings",
}
# The settings a level further down (records), with their struct in settings.rs.
DEEP_SETTINGS_KEYS = {
    ("records", "webhook"): ("WebhookSettings", {"url", "keySecret", "caSecret"}),
    ("records", "webhook", "keySecret"): ("SecretKeyRef", {"name", "key"}),
    ("records", "webhook", "caSecret"): ("SecretKeyRef", {"name", "key"}),
    ("records", "spool"): ("SpoolSettings", {"maxBytes", "volume"}),
}


def camel(snake: str) -> str:
    head, *rest = snake.rstrip("_").split("_")
    return head + "".join(part.capitalize() for part in rest)


def rust_struct_keys(source: str, struct: str) -> set[str]:
    body = re.search(rf"pub struct {struct} \{{(.*?)\n\}}", source, re.S)
    assert body, f"struct {struct} not found in settings.rs"
    keys = set()
    for match in re.finditer(r"((?:#\[serde\([^\n]*\)\]\s*)*)pub (\w+):", body.group(1)):
        rename = re.search(r'rename = "(\w+)"', match.group(1))
        keys.add(rename.group(1) if rename else camel(match.group(2)))
    return keys


def test_the_settings_keys_are_the_operators_own():
    """The settings struct refuses unknown keys: the chart's keys must be exactly its fields."""
    path = REPO / "src" / "operator" / "settings.rs"
    if not path.exists():
        pytest.skip("src/operator/settings.rs is not in this tree")
    source = path.read_text()
    assert rust_struct_keys(source, RUST_STRUCT_OF[None]) == SETTINGS_KEYS
    for key, nested in NESTED_SETTINGS_KEYS.items():
        assert rust_struct_keys(source, RUST_STRUCT_OF[key]) == nested, key
    for path, (struct, keys) in DEEP_SETTINGS_KEYS.items():
        assert rust_struct_keys(source, struct) == keys, path


def dig(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def records_settings(records: dict[str, Any]) -> dict[str, Any]:
    """The `records` the chart writes for the merged `gateway.records` values: a named claim
    replaces the default emptyDir (Helm merges maps, so both are in the values)."""
    out = copy.deepcopy(records)
    claim = out["spool"]["volume"].get("persistentVolumeClaim")
    if claim:
        out["spool"]["volume"] = {"persistentVolumeClaim": claim}
    return out


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_settings_file_holds_the_gateway_values(renderings, name):
    r = renderings[name]
    settings = r.settings()
    with helm.Chart.load(CHART) as chart:
        gateway = chart.merge_values(VALUE_SETS[name])["gateway"]
    fleet = gateway["name"] or RELEASE
    expected_keys = SETTINGS_KEYS - ({"affinity"} if not gateway["affinity"] else set())
    assert set(settings) == expected_keys
    for key, keys in NESTED_SETTINGS_KEYS.items():
        assert set(settings[key]) == keys, key
    for path, (_, keys) in DEEP_SETTINGS_KEYS.items():
        assert set(dig(settings, path)) == keys, path
    assert settings["records"] == records_settings(gateway["records"])
    assert settings["name"] == fleet
    assert settings["namespace"] == NAMESPACE
    assert settings["credentialsSecret"] == (
        gateway["credentialsSecret"] or f"{fleet}-gateway-credentials")
    for key in SETTINGS_KEYS - {"name", "namespace", "image", "imagePullPolicy",
                                "imagePullSecrets", "credentialsSecret", "affinity",
                                "publicAddressFrom", "watchNamespace", "operatorDeployment",
                                "records"}:
        assert settings[key] == gateway[key], key
    # Computed: the address source in force, the operator's namespace and Deployment.
    assert settings["publicAddressFrom"] == (
        gateway["publicAddressFrom"] or ("Fixed" if gateway["publicAddress"] else "Node"))
    assert settings["operatorDeployment"] == OPERATOR
    assert settings["watchNamespace"] == VALUE_SETS[name].get("operator", {}).get(
        "watchNamespace", "")


def test_the_default_settings_are_the_documented_fleet(default):
    settings = default.settings()
    assert settings["mode"] == "Deployment" and settings["replicas"] == 2
    # On the host network, each gateway advertising its own node's address: audio reaches the
    # pod that holds the call.
    assert settings["hostNetwork"] is True
    assert settings["publicAddressFrom"] == "Node"
    assert settings["nodeAddressAnnotation"] == "trunkline.dev/public-address"
    assert (settings["sipPort"], settings["internalPort"], settings["adminPort"]) == (
        5060, 5080, 9090)
    assert settings["tls"] == {"port": 5061, "secretName": "", "caSecret": ""}
    # New calls from the agent side: the cluster's private ranges and loopback; no call API.
    assert settings["agentNetworks"] == [
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8", "127.0.0.0/8", "::1/128"]
    assert settings["api"] == {"enabled": False, "port": 9091, "tokenSecret": ""}
    assert (settings["agentUri"], settings["agentCredentialsSecret"]) == ("", "")
    assert settings["rtpPorts"] == "20000-20999"
    assert settings["carrierService"]["type"] == "LoadBalancer"
    assert settings["carrierService"]["externalTrafficPolicy"] == "Local"
    assert settings["image"] == "ghcr.io/trunkline/trunkline:0.1.0"
    assert settings["credentialsSecret"] == "trunkline-gateway-credentials"
    assert settings["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    assert settings["podDisruptionBudget"] == {"enabled": True, "maxUnavailable": 1}
    # Session records as JSON lines on stdout; no webhook, so no spool is rendered.
    assert settings["records"] == {
        "stdout": True,
        "answered": False,
        "webhook": {"url": "", "keySecret": {"name": "", "key": "key"},
                    "caSecret": {"name": "", "key": "ca.crt"}},
        "spool": {"maxBytes": 1073741824, "volume": {"emptyDir": {}}},
    }


# The gateway flag of each security value (docs/security/per-source.md, streams.md,
# lifetime.md): the operator passes each one, changed or not.
SECURITY_FLAGS = {
    ("maxCallDurationSeconds",): "--max-call-duration",
    ("maxHoldSeconds",): "--max-hold",
    ("minSessionExpiresSeconds",): "--min-session-expires",
    ("guard", "sourceInviteRate"): "--source-invite-rate",
    ("guard", "sourceOptionsRate"): "--source-options-rate",
    ("guard", "sourceRequestRate"): "--source-request-rate",
    ("guard", "globalRequestRate"): "--global-request-rate",
    ("guard", "maxSources"): "--max-sources",
    ("guard", "authFailures"): "--auth-failures",
    ("guard", "authFailureWindowSeconds"): "--auth-failure-window",
    ("guard", "authLockoutSeconds"): "--auth-lockout",
    ("guard", "usernameFailures"): "--username-failures",
    ("guard", "usernameAttemptRate"): "--username-attempt-rate",
    ("guard", "nonceGuesses"): "--nonce-guesses",
    ("guard", "refusalLogIntervalSeconds"): "--refusal-log-interval",
    ("connections", "max"): "--max-connections",
    ("connections", "maxPerAddress"): "--max-connections-per-address",
    ("connections", "messageTimeoutSeconds"): "--message-timeout",
    ("connections", "idleTimeoutSeconds"): "--connection-idle-timeout",
    ("connections", "tlsHandshakeTimeoutSeconds"): "--tls-handshake-timeout",
    ("connections", "writeTimeoutSeconds"): "--write-timeout",
}


def golden_gateway_args(case: str) -> list[str] | None:
    path = REPO / "tests" / "golden" / "fleet" / f"{case}.out.yaml"
    if not path.exists():
        return None
    objects = [o for o in yaml.safe_load_all(path.read_text()) if o]
    (workload,) = [o for o in objects if o["kind"] in ("Deployment", "DaemonSet")]
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container["args"]


def test_the_charts_security_defaults_are_the_gateways_flags_defaults(default):
    """The chart's defaults equal the operator's (its golden `defaults` rendering, made from
    OperatorSettings::default()), which src/cli.rs tests against the gateway's own flag
    defaults: a default install passes the gateway exactly what it would assume."""
    settings = default.settings()
    args = golden_gateway_args("defaults")
    if args is None:
        pytest.skip("tests/golden/fleet/ (the operator's fleet renderings) is not in this tree")
    assert set(SECURITY_FLAGS) == {(k,) for k in ("maxCallDurationSeconds", "maxHoldSeconds",
                                                  "minSessionExpiresSeconds")} | {
        (section, key) for section in ("guard", "connections") for key in settings[section]}
    for path, flag in SECURITY_FLAGS.items():
        assert args[args.index(flag) + 1] == str(dig(settings, path)), (path, flag)


def test_changed_security_values_reach_the_settings_file():
    values = {"gateway": {
        "maxCallDurationSeconds": 0, "maxHoldSeconds": 600, "minSessionExpiresSeconds": 300,
        "guard": {"sourceInviteRate": 200, "authFailures": 0, "authLockoutSeconds": 900},
        "connections": {"max": 20000, "maxPerAddress": 400, "writeTimeoutSeconds": 4}}}
    settings = Rendering(values).settings()
    assert (settings["maxCallDurationSeconds"], settings["maxHoldSeconds"],
            settings["minSessionExpiresSeconds"]) == (0, 600, 300)
    # The values given, and the defaults of the rest of each section.
    assert settings["guard"] == {
        "sourceInviteRate": 200, "sourceOptionsRate": 10, "sourceRequestRate": 10,
        "globalRequestRate": 2000, "maxSources": 65536, "authFailures": 0,
        "authFailureWindowSeconds": 60, "authLockoutSeconds": 900, "usernameFailures": 20,
        "usernameAttemptRate": 1, "nonceGuesses": 3, "refusalLogIntervalSeconds": 10}
    assert settings["connections"] == {
        "max": 20000, "maxPerAddress": 400, "messageTimeoutSeconds": 10,
        "idleTimeoutSeconds": 300, "tlsHandshakeTimeoutSeconds": 5, "writeTimeoutSeconds": 4}


def test_a_named_claim_replaces_the_default_empty_dir_in_the_settings(renderings):
    records = renderings["records-webhook-shared-claim"].settings()["records"]
    assert records["spool"] == {
        "maxBytes": 268435456, "volume": {"persistentVolumeClaim": {"claimName": "trunkline-records"}}}
    assert records["webhook"] == {
        "url": "https://records.example.com/v1/calls",
        "keySecret": {"name": "records-hmac", "key": "hmac"},
        "caSecret": {"name": "records-ca", "key": "ca.crt"}}
    # Setting the emptyDir to null (Helm's way to delete a default) gives the same settings.
    explicit = Rendering(merge_values(VALUE_SETS["records-webhook-shared-claim"], {
        "gateway": {"records": {"spool": {"volume": {"emptyDir": None}}}}}))
    assert explicit.settings()["records"] == records


def test_the_records_secrets_add_nothing_to_the_operators_rbac(default, renderings):
    """The kubelet mounts the webhook's key and CA into the gateways: the operator never reads
    them, so naming them grants it nothing (and the gateways' reader role neither)."""
    r = renderings["records-webhook-shared-claim"]
    for kind in ("ClusterRole", "Role"):
        assert [o["rules"] for o in r.all(kind)] == [o["rules"] for o in default.all(kind)], kind
    text = yaml.safe_dump([o for o in r.objects if o["kind"] in ("ClusterRole", "Role")])
    assert "records-hmac" not in text and "records-ca" not in text


def test_the_fleet_renders_records_as_the_settings_say():
    """The operator's golden renderings of the records cases (tests/golden/fleet): the spool on
    its volume, the webhook's Secrets as files, no Secret in the gateways' Role."""
    golden = REPO / "tests" / "golden" / "fleet"
    if not (golden / "records-webhook-empty-dir.out.yaml").exists():
        pytest.skip("tests/golden/fleet/ (the operator's fleet renderings) is not in this tree")
    for case, volume in [("records-webhook-empty-dir", {"emptyDir": {"sizeLimit": "320Mi"}}),
                         ("records-https-ca-shared-claim",
                          {"persistentVolumeClaim": {"claimName": "trunkline-records-spools"}})]:
        objects = list(yaml.safe_load_all((golden / f"{case}.out.yaml").read_text()))
        (workload,) = [o for o in objects if o and o["kind"] in ("Deployment", "DaemonSet")]
        pod = workload["spec"]["template"]["spec"]
        (spool,) = [v for v in pod["volumes"] if v["name"] == "records-spool"]
        assert {k: v for k, v in spool.items() if k != "name"} == volume, case
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["records-spool"]["mountPath"] == "/var/lib/trunkline/records"
        assert mounts["records-webhook-key"]["readOnly"] is True
        args = container["args"]
        assert args[args.index("--records-spool") + 1].startswith("/var/lib/trunkline/records")
        assert not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
        (role,) = [o for o in objects if o and o["kind"] == "Role"]
        assert role_secret_name(role) == "trunkline-gateway-credentials"


def test_daemonset_mode_on_the_host_network_reaches_the_settings(renderings):
    r = renderings["daemonset-hostnetwork"]
    settings = r.settings()
    assert (settings["mode"], settings["hostNetwork"]) == ("DaemonSet", True)
    assert settings["carrierService"]["type"] == "ClusterIP"
    assert settings["nodeSelector"] == {"trunkline.dev/edge": "true"}
    assert settings["tolerations"][0]["key"] == "dedicated"
    assert settings["region"] == "eu-west"
    assert settings["egressAddresses"] == ["198.51.100.10", "198.51.100.11"]
    assert "pod-security.kubernetes.io/enforce=privileged" in r.notes
    assert "DaemonSet, host network" in r.notes


def test_a_load_balancer_with_source_ranges_and_tls_reaches_the_settings(renderings):
    r = renderings["loadbalancer-source-ranges"]
    settings = r.settings()
    assert settings["carrierService"] == {
        "type": "LoadBalancer",
        "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
        "loadBalancerSourceRanges": ["203.0.113.0/24", "2001:db8::/32"],
        "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
    }
    assert settings["tls"] == {"port": 5061, "secretName": "sip-tls", "caSecret": ""}
    assert settings["publicAddress"] == "198.51.100.7"
    assert settings["publicAddressFrom"] == "Fixed" and settings["replicas"] == 1
    assert "WARNING" not in r.notes and "TIP" not in r.notes
    assert "sip-tls" in r.notes


def test_an_affinity_reaches_the_settings_only_when_set():
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}]}}}
    assert Rendering({"gateway": {"affinity": affinity}}).settings()["affinity"] == affinity


# --- Monitoring and NetworkPolicies ---------------------------------------------------------


def test_the_service_monitor_scrapes_the_operator_and_a_pod_monitor_the_gateways(renderings):
    r = renderings["servicemonitor"]
    monitor = r.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        r.one("Service")["metadata"]["labels"].items())
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "admin", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
    pods = r.one("PodMonitor")
    assert pods["metadata"]["labels"]["release"] == "prometheus"
    # The labels operator::fleet puts on every gateway pod, and the name of its admin port.
    assert pods["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/component": "gateway", "trunkline.dev/fleet": RELEASE}
    assert pods["spec"]["podMetricsEndpoints"] == [
        {"port": "admin", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]


DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")


def test_the_prometheus_rule_is_off_by_default(default):
    assert not default.all("PrometheusRule")


def test_the_prometheus_rule_has_every_alert_with_a_severity_and_annotations(renderings):
    rule = renderings["servicemonitor"].one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names)), names
    assert {"TrunklineOperatorNotLeading", "TrunklineObjectsNotAccepted",
            "TrunklineObjectsNotProgrammed", "TrunklineGatewayConfigSkew",
            "TrunklineInboundRefusalSpike", "TrunklineAuthFailureSpike", "TrunklineRtpLossHigh",
            "TrunklineRtpPortsExhausted", "TrunklineRtpPortsNearlyExhausted",
            "TrunklineGatewayReportsUnreachable", "TrunklineRecordsSpoolFilling",
            "TrunklineRecordsRefused"} <= set(names)
    for alert in alerts:
        name = alert["alert"]
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        assert "for" not in alert or DURATION.match(alert["for"]), name
        expr = alert["expr"]
        # Every placeholder was filled; every selector is the release's namespace.
        assert "{{" not in expr and "<no value>" not in expr, f"{name}: {expr}"
        assert expr.count("trunkline_") == expr.count(f'{{namespace="{NAMESPACE}"'), \
            f"{name}: a selector without the namespace: {expr}"
        # Prometheus fills $value and $labels itself: Helm must leave them.
        for text in alert["annotations"].values():
            assert "<no value>" not in text, name


def test_the_prometheus_rule_takes_its_thresholds_from_the_values():
    values = {"metrics": {"prometheusRule": {
        "enabled": True, "pendingFor": "25m", "refusalsPerSecond": 7, "authFailuresPerSecond": 3,
        "rtpLossRatio": 0.07, "rtpPortsUsedRatio": 0.75}}}
    rule = Rendering(values).one("PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert alerts["TrunklineOperatorNotLeading"]["for"] == "25m"
    assert alerts["TrunklineInboundRefusalSpike"]["expr"].endswith("> 7")
    assert alerts["TrunklineAuthFailureSpike"]["expr"].endswith("> 3")
    assert alerts["TrunklineRtpLossHigh"]["expr"].endswith("> 0.07")
    assert alerts["TrunklineRtpPortsNearlyExhausted"]["expr"].endswith("> 0.75")


DASHBOARD_FILE = CHART / "files" / "grafana-dashboard.json"


def dashboards(rendering: Rendering) -> list[dict[str, Any]]:
    return [c for c in rendering.all("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]


def test_the_grafana_dashboard_is_off_by_default(default):
    assert not dashboards(default)


def test_the_grafana_dashboard_is_a_configmap_the_sidecar_picks_up(renderings):
    (config_map,) = dashboards(renderings["servicemonitor"])
    assert config_map["metadata"]["name"] == f"{RELEASE}-dashboard"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    # kube-prometheus-stack's sidecar selects grafana_dashboard: "1" (a string, as labels are).
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert "annotations" not in config_map["metadata"]
    (name,) = config_map["data"]
    assert name.endswith(".json")
    shipped = json.loads(config_map["data"][name])
    assert shipped == json.loads(DASHBOARD_FILE.read_text()), "the dashboard changed on the way"
    assert shipped["uid"] == "trunkline-overview" and shipped["panels"]
    # Helm left Grafana's and Prometheus's own templates alone.
    assert "{{direction}} {{outcome}}" in config_map["data"][name]


def test_the_grafana_dashboard_takes_its_labels_annotations_and_namespace_from_the_values():
    (config_map,) = dashboards(Rendering({"grafanaDashboard": {
        "enabled": True, "labels": {"dashboards": "voice"},
        "annotations": {"grafana_folder": "Voice"}, "namespace": "monitoring"}}))
    metadata = config_map["metadata"]
    assert metadata["namespace"] == "monitoring"
    assert metadata["labels"]["dashboards"] == "voice"
    # Helm merges maps: the default label stays unless set to null.
    assert metadata["labels"]["grafana_dashboard"] == "1"
    (config_map,) = dashboards(Rendering({"grafanaDashboard": {
        "enabled": True, "labels": {"grafana_dashboard": None, "dashboards": "voice"}}}))
    assert "grafana_dashboard" not in config_map["metadata"]["labels"]
    assert metadata["annotations"] == {"grafana_folder": "Voice"}


def test_carriers_reach_only_the_sip_and_rtp_ports_of_the_gateways(renderings):
    r = renderings["networkpolicy"]
    policy = r.one("NetworkPolicy", f"{RELEASE}-gateway")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/component": "gateway", "trunkline.dev/fleet": RELEASE}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    carriers, agents, prometheus, operator_probe = policy["spec"]["ingress"]
    assert carriers == {
        "from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
        "ports": [
            {"protocol": "UDP", "port": 5060}, {"protocol": "TCP", "port": 5060},
            {"protocol": "TCP", "port": 5061},
            {"protocol": "UDP", "port": 30000, "endPort": 30999},
        ],
    }
    assert agents == {
        "from": VALUE_SETS["networkpolicy"]["networkPolicy"]["agents"],
        "ports": [{"protocol": "UDP", "port": 5080}, {"protocol": "TCP", "port": 5080}],
    }
    assert prometheus == {
        "from": VALUE_SETS["networkpolicy"]["networkPolicy"]["prometheus"],
        "ports": [{"protocol": "TCP", "port": 9090}],
    }
    # The operator reads each gateway's report on the admin port.
    assert operator_probe == {
        "from": [{"podSelector": {"matchLabels": r.one("Deployment")["spec"]["selector"][
            "matchLabels"]}}],
        "ports": [{"protocol": "TCP", "port": 9090}],
    }
    operator = r.one("NetworkPolicy", OPERATOR)
    assert operator["spec"]["podSelector"]["matchLabels"] == (
        r.one("Deployment")["spec"]["selector"]["matchLabels"])
    assert operator["spec"]["ingress"] == [{
        "from": VALUE_SETS["networkpolicy"]["networkPolicy"]["prometheus"],
        "ports": [{"protocol": "TCP", "port": 8080}],
    }]


def test_the_agents_reach_the_call_api_port_beside_internal_sip_when_it_is_on(renderings):
    r = renderings["outbound-api-pod-network"]
    ingress = r.one("NetworkPolicy", f"{RELEASE}-gateway")["spec"]["ingress"]
    carriers, agents = ingress[0], ingress[1]
    assert agents == {
        "from": VALUE_SETS["outbound-api-pod-network"]["networkPolicy"]["agents"],
        "ports": [{"protocol": "UDP", "port": 5080}, {"protocol": "TCP", "port": 5080},
                  {"protocol": "TCP", "port": 9443}],
    }
    # Carriers never reach it.
    assert all(p["port"] != 9443 for p in carriers["ports"])
    assert all(p["port"] != 9443 for rule in ingress[2:] for p in rule["ports"])
    # ... and the outbound values reach the operator's settings as they were given.
    settings = r.settings()
    gateway = VALUE_SETS["outbound-api-pod-network"]["gateway"]
    assert settings["agentNetworks"] == gateway["agentNetworks"]
    assert settings["api"] == {"enabled": True, "port": 9443, "tokenSecret": ""}
    assert settings["tls"]["caSecret"] == "carrier-ca"
    assert settings["agentCredentialsSecret"] == "agent-runtime-credentials"
    assert settings["agentUri"] == gateway["agentUri"]


def test_without_the_call_api_the_agents_reach_internal_sip_only():
    r = Rendering({"networkPolicy": {"enabled": True}, "gateway": {"api": {"port": 9443}}})
    agents = r.one("NetworkPolicy", f"{RELEASE}-gateway")["spec"]["ingress"][1]
    assert agents["ports"] == [{"protocol": "UDP", "port": 5080}, {"protocol": "TCP", "port": 5080}]


def test_the_policy_admits_the_api_port_the_fleet_renders():
    """The chart's NetworkPolicy opens, for the agents, the `api` port that operator::fleet's
    golden renderings put on the gateway container (tests/golden/fleet), when present."""
    cases = sorted((REPO / "tests" / "golden" / "fleet").glob("*.in.yaml"))
    checked = 0
    for case in cases:
        settings = yaml.safe_load(case.read_text()) or {}
        api = settings.get("api") or {}
        if not api.get("enabled"):
            continue
        out = case.with_name(case.name.replace(".in.yaml", ".out.yaml"))
        workload = next(d for d in yaml.safe_load_all(out.read_text())
                        if isinstance(d, dict) and d.get("kind") in ("Deployment", "DaemonSet"))
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        (port,) = [p for p in container["ports"] if p.get("name") == "api"]
        r = Rendering({"networkPolicy": {"enabled": True},
                       "gateway": {"api": {"enabled": True, "port": port["containerPort"]}}})
        agents = r.one("NetworkPolicy", f"{RELEASE}-gateway")["spec"]["ingress"][1]
        assert {"protocol": port["protocol"], "port": port["containerPort"]} in agents["ports"]
        checked += 1
    if not cases:
        pytest.skip("tests/golden/fleet/ (the operator's fleet renderings) is not in this tree")
    assert checked, "a golden fleet with the call API on"


@pytest.mark.parametrize("values", [{}, {"operator": {"watchNamespace": "trunks"}},
                                    {"operator": {"watchNamespace": NAMESPACE}}],
                         ids=["cluster-wide", "other-namespace", "own-namespace"])
def test_the_operator_may_create_the_generated_api_token_in_its_namespace(values):
    """With gateway.api.enabled and no tokenSecret, the operator POSTs `<fleet>-api-token` in the
    release namespace (and never updates it): `create` on Secrets there, whatever it watches."""
    r = Rendering({**values, "gateway": {"api": {"enabled": True}}})
    granted = permissions(r.one("ClusterRole", OPERATOR))
    for role in r.all("Role"):
        if role["metadata"]["namespace"] == NAMESPACE and role["metadata"]["name"] == OPERATOR:
            granted |= permissions(role)
    assert holds(granted, ("", "secrets", f"{RELEASE}-api-token", "create"))
    # Its owner reference names the operator's Deployment, which it may read.
    assert holds(granted, ("apps", "deployments", f"{RELEASE}-operator", "get"))


def gateway_ingress(r: Rendering) -> list[dict[str, Any]]:
    return r.one("NetworkPolicy", f"{RELEASE}-gateway")["spec"]["ingress"]


def open_ports(ingress: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """The (protocol, port) pairs some rule admits from every source (a rule without `from`)."""
    return {(p["protocol"], p["port"]) for rule in ingress if not rule.get("from")
            for p in rule["ports"]}


def peers_of(ingress: list[dict[str, Any]], protocol: str, port: int) -> list[dict[str, Any]]:
    """Every peer some rule admits to (protocol, port)."""
    return [peer for rule in ingress if {"protocol": protocol, "port": port} in rule["ports"]
            for peer in rule.get("from", [])]


DEFAULT_AGENTS = [{"namespaceSelector": {"matchLabels": {"trunkline.dev/agents": "true"}}}]
DEFAULT_PROMETHEUS = [
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


@pytest.mark.parametrize("values", [{}, {"gateway": {"api": {"enabled": True}}},
                                    {"gateway": {"hostNetwork": False, "publicAddressFrom": "Pod",
                                                 "api": {"enabled": True, "port": 9443}}}],
                         ids=["defaults", "api", "pod-network-api"])
def test_by_default_the_policies_admit_agents_api_and_metrics_only_from_their_peers(values):
    """Zones: the NetworkPolicies are on without a value; the internal SIP port, the call API
    and the admin port are admitted only from the configured peers, never from every source,
    while the carriers' SIP and RTP stay open to every source."""
    r = Rendering(values)
    api = (values.get("gateway", {}).get("api", {})).get("port", 9091)
    ingress = gateway_ingress(r)
    opened = open_ports(ingress)
    restricted = [("UDP", 5080), ("TCP", 5080), ("TCP", 9090)]
    if values.get("gateway", {}).get("api", {}).get("enabled"):
        restricted.append(("TCP", api))
    for protocol, port in restricted:
        assert (protocol, port) not in opened, f"{protocol}/{port} open to every source"
    for protocol, port in restricted[:2] + restricted[3:]:
        assert peers_of(ingress, protocol, port) == DEFAULT_AGENTS, (protocol, port)
    operator_pods = {"podSelector": {"matchLabels": r.one("Deployment")["spec"]["selector"][
        "matchLabels"]}}
    assert peers_of(ingress, "TCP", 9090) == DEFAULT_PROMETHEUS + [operator_pods]
    assert {("UDP", 5060), ("TCP", 5060)} <= opened
    assert r.one("NetworkPolicy", OPERATOR)["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": 8080}], "from": DEFAULT_PROMETHEUS}]


def test_a_custom_agent_selector_renders_as_given_and_an_empty_prometheus_list_admits_no_one(
        renderings):
    r = renderings["networkpolicy-agent-pods-no-scrape"]
    given = VALUE_SETS["networkpolicy-agent-pods-no-scrape"]["networkPolicy"]["agents"]
    ingress = gateway_ingress(r)
    for protocol, port in [("UDP", 5080), ("TCP", 5080), ("TCP", 9091)]:
        assert peers_of(ingress, protocol, port) == given, (protocol, port)
    # The admin port: the operator only, no Prometheus rule at all (never one without `from`).
    assert all(rule.get("from") for rule in ingress[1:])
    operator_pods = {"podSelector": {"matchLabels": r.one("Deployment")["spec"]["selector"][
        "matchLabels"]}}
    assert peers_of(ingress, "TCP", 9090) == [operator_pods]
    assert r.one("NetworkPolicy", OPERATOR)["spec"]["ingress"] == []


def test_an_empty_agent_list_leaves_internal_sip_and_the_api_closed():
    r = Rendering({"gateway": {"api": {"enabled": True}}, "networkPolicy": {"agents": []}})
    ingress = gateway_ingress(r)
    for protocol, port in [("UDP", 5080), ("TCP", 5080), ("TCP", 9091)]:
        assert (protocol, port) not in open_ports(ingress)
        assert peers_of(ingress, protocol, port) == []
    assert "networkPolicy.agents is empty" in r.notes


def test_the_notes_say_how_to_let_the_agent_runtime_in(default):
    assert "kubectl label namespace <agents> trunkline.dev/agents=true" in default.notes
    assert "agent-facing (5080) and admin (9090) ports" in default.notes


def test_the_policies_can_be_turned_off():
    assert not Rendering({"networkPolicy": {"enabled": False}}).all("NetworkPolicy")


def test_without_tls_or_carrier_peers_the_policy_opens_sip_and_rtp_to_every_source():
    r = Rendering({"networkPolicy": {"enabled": True}})
    carriers = r.one("NetworkPolicy", f"{RELEASE}-gateway")["spec"]["ingress"][0]
    assert "from" not in carriers
    assert carriers["ports"] == [
        {"protocol": "UDP", "port": 5060}, {"protocol": "TCP", "port": 5060},
        {"protocol": "UDP", "port": 20000, "endPort": 20999},
    ]


def test_the_gateway_selectors_match_the_gateway_pods_the_operator_renders():
    """The PodMonitor and the NetworkPolicy select the pods of operator::fleet's golden
    renderings, when present, and scrape their `admin` port."""
    workloads = [o for o in golden_fleet_objects() if o["kind"] in ("Deployment", "DaemonSet")]
    if not workloads:
        pytest.skip("tests/golden/fleet/ (the operator's fleet renderings) is not in this tree")
    for workload in workloads:
        pod = workload["spec"]["template"]
        fleet = pod["metadata"]["labels"]["trunkline.dev/fleet"]
        r = Rendering({"gateway": {"name": fleet}, "networkPolicy": {"enabled": True},
                       "metrics": {"serviceMonitor": {"enabled": True}}})
        monitor = r.one("PodMonitor")["spec"]
        policy = r.one("NetworkPolicy", f"{RELEASE}-gateway")["spec"]
        for selector in (monitor["selector"], policy["podSelector"]):
            assert selector["matchLabels"].items() <= pod["metadata"]["labels"].items()
        (container,) = pod["spec"]["containers"]
        admin = [p for p in container["ports"] if p.get("name") == "admin"]
        assert len(admin) == 1 and admin[0]["protocol"] == "TCP"


# --- NOTES.txt ------------------------------------------------------------------------------


def test_the_notes_say_what_to_do_next(default):
    notes = default.notes
    assert f"kubectl -n {NAMESPACE} get svc {RELEASE}-carrier" in notes
    assert "trunkline check trunks/" in notes
    assert "kubectl get inboundtrunks" in notes
    assert f"{RELEASE}-internal.{NAMESPACE}.svc:5080" in notes
    # What carriers must allowlist, and where to find it.
    assert "its node's address" in notes and ".status.endpoints" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    # A default that deserves a tip: an open load balancer.
    assert "loadBalancerSourceRanges is empty" in notes
    assert "kubectl apply --server-side --force-conflicts -f charts/trunkline/crds/" in notes
    assert "helm uninstall" in notes and "owner references" in notes


def test_the_notes_say_where_the_call_api_is_and_how_to_read_its_token(renderings):
    notes = renderings["outbound-api-pod-network"].notes
    assert f"http://{RELEASE}-internal.{NAMESPACE}.svc:9443/v1/calls" in notes
    assert f"get secret {RELEASE}-api-token -o jsonpath='{{.data.token}}'" in notes
    assert "from gateway.agentNetworks only (10.42.0.0/16, fd00:42::/64)" in notes
    assert "/v1/calls" not in renderings["defaults"].notes
    named = Rendering({"gateway": {"api": {"enabled": True, "tokenSecret": "call-api"}}}).notes
    assert "get secret call-api -o" in named


def test_a_release_in_another_namespace_uses_it_everywhere():
    r = Rendering(release="sbc", namespace="telephony")
    assert r.settings()["namespace"] == "telephony"
    assert r.settings()["name"] == "sbc-trunkline"
    for obj in r.objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "telephony"
    for binding in r.all("ClusterRoleBinding"):
        assert binding["subjects"][0]["namespace"] == "telephony"


def test_the_rendering_is_deterministic():
    assert render({}) == render({})

