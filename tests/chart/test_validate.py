"""The chart against outside judges: its CRDs are the repository's, `helm lint` finds nothing,
kubernetes-validate accepts every rendered object against the Kubernetes API schemas (offline,
bundled with the package), and checkov finds nothing beyond the skips documented in
charts/trunkline/.checkov.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, KUBE_VERSION, NAMESPACE, REPO, VALUE_SETS, documents

CHECKOV_CONFIG = CHART / ".checkov.yaml"
# Prometheus Operator kinds: their schemas come with the Prometheus Operator, not Kubernetes.
NO_KUBERNETES_SCHEMA = {("monitoring.coreos.com/v1", "ServiceMonitor"),
                        ("monitoring.coreos.com/v1", "PodMonitor"),
                        ("monitoring.coreos.com/v1", "PrometheusRule")}


def test_the_chart_crds_are_byte_identical_to_the_repository_crds():
    repository = {p.name: p.read_bytes() for p in sorted((REPO / "crds").glob("*.yaml"))}
    chart = {p.name: p.read_bytes() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert repository, "crds/ holds no CRD"
    assert sorted(chart) == sorted(repository), "charts/trunkline/crds/ and crds/ list other files"
    for name, data in repository.items():
        assert chart[name] == data, (
            f"charts/trunkline/crds/{name} differs from crds/{name}: cp crds/*.yaml "
            "charts/trunkline/crds/")


def test_helm_loads_the_three_crds():
    with helm.Chart.load(CHART) as chart:
        kinds = sorted(yaml.safe_load(crd["data"])["spec"]["names"]["kind"] for crd in chart.crds)
    assert kinds == ["InboundTrunk", "OutboundTrunk", "TransferDestination"]


def test_the_chart_metadata_is_the_release(tmp_path):
    with helm.Chart.load(CHART) as chart:
        metadata = chart.metadata
    cargo = (REPO / "Cargo.toml").read_text()
    version = next(line.split('"')[1] for line in cargo.splitlines() if line.startswith("version"))
    assert metadata["appVersion"] == version, "appVersion is the image tag: the crate's version"
    assert metadata["kubeVersion"] == ">=1.33.0-0"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_finds_nothing(name):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # Severity 1 is information (Helm recommends an icon); warnings (2) and errors (3) fail.
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == []


def test_helm_lint_reports_bad_values():
    report = helm.lint(CHART, {"gateway": {"mode": "Sometimes"}}, namespace=NAMESPACE)
    assert any("/gateway/mode" in error for error in report["errors"]), report


def rendered_objects(name: str) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        return documents(chart.render(VALUE_SETS[name], name="trunkline", namespace=NAMESPACE,
                                      is_install=True))


def crd_objects() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_kubernetes_validate_accepts_every_object(name):
    validated, unvalidated = [], set()
    for obj in rendered_objects(name) + (crd_objects() if name == "defaults" else []):
        key = (obj["apiVersion"], obj["kind"])
        if key in NO_KUBERNETES_SCHEMA:
            unvalidated.add(key)
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {path}: {error.message}")
        validated.append(key)
    assert validated, "nothing was validated"
    if name == "servicemonitor":
        assert unvalidated == NO_KUBERNETES_SCHEMA
    else:
        assert not unvalidated


def test_kubernetes_validate_accepts_every_fleet_object_the_operator_renders():
    """The objects operator::fleet renders (its golden files, tests/golden/fleet) against the
    same API schemas: volumes, mounts and security contexts the chart never renders itself."""
    golden = REPO / "tests" / "golden" / "fleet"
    paths = sorted(golden.glob("*.out.yaml"))
    if not paths:
        pytest.skip("tests/golden/fleet/ (the operator's fleet renderings) is not in this tree")
    kinds = set()
    for path in paths:
        for obj in yaml.safe_load_all(path.read_text()):
            if not isinstance(obj, dict):
                continue  # a refused case: its error as a string
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(p) for p in error.path)
                pytest.fail(f"{path.name}: {obj['kind']} {obj['metadata']['name']}: {where}: "
                            f"{error.message}")
            kinds.add(obj["kind"])
    assert {"Deployment", "DaemonSet", "Service", "Role"} <= kinds, kinds


def test_kubernetes_validate_catches_a_broken_object():
    """The validation is real: a Deployment with a misspelt field fails it."""
    (deployment,) = [o for o in rendered_objects("defaults") if o["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def checkov(directory: Path, *args: str, framework: str = "kubernetes") -> dict[str, Any]:
    """Runs checkov (from this environment, offline) on the files in `directory`."""
    command = [str(Path(sys.executable).with_name("checkov")), "--framework", framework,
               "--skip-download", "--directory", str(directory), "--output", "json", *args]
    # No update check against PyPI: the scan itself is offline (--skip-download).
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                          cwd=directory)
    assert done.returncode in (0, 1), f"checkov failed: {done.stderr[-3000:]}"
    report = json.loads(done.stdout)
    assert isinstance(report, dict) and report["check_type"] == framework, done.stdout[:500]
    return report


def write_manifests(directory: Path, objects: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True)
    (directory / "manifests.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))


def failures(report: dict[str, Any]) -> list[str]:
    return [f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
            for c in report["results"]["failed_checks"]]


def test_checkov_finds_nothing_beyond_the_documented_skips(tmp_path):
    """One checkov run over every value set's rendering, each in its own folder."""
    for name in VALUE_SETS:
        write_manifests(tmp_path / name, rendered_objects(name))
    report = checkov(tmp_path, "--config-file", str(CHECKOV_CONFIG))
    assert failures(report) == []
    assert report["summary"]["passed"] > 100, report["summary"]
    assert report["summary"]["resource_count"] >= 9 * len(VALUE_SETS), report["summary"]
    assert report["summary"]["parsing_errors"] == 0
    # Every check the config skips is one that would fire: no stale skip.
    configured = set(yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"])
    unskipped = checkov(tmp_path / "defaults", "--check", ",".join(sorted(configured)))
    fired = {c["check_id"] for c in unskipped["results"]["failed_checks"]}
    assert fired == configured


def test_checkov_passes_the_network_policy_check_when_policies_are_on(tmp_path):
    write_manifests(tmp_path / "networkpolicy", rendered_objects("networkpolicy"))
    report = checkov(tmp_path, "--check", "CKV2_K8S_6")
    assert failures(report) == []
    assert report["summary"]["passed"] >= 1, report["summary"]


def test_helm_packages_the_chart_with_its_crds_and_without_the_scanner_config(tmp_path):
    archive = helm.package(CHART, destination=tmp_path)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert Path(archive).name == "trunkline-0.1.0.tgz"
    assert "trunkline/values.schema.json" in names
    assert "trunkline/crds/inboundtrunks.trunkline.dev.yaml" in names
    assert "trunkline/templates/NOTES.txt" in names
    assert not [n for n in names if n.endswith(".checkov.yaml")]


def test_checkov_finds_nothing_in_the_dockerfile_but_the_missing_healthcheck(tmp_path):
    """CKV_DOCKER_2 (no HEALTHCHECK) is skipped for the reason the Dockerfile gives: Kubernetes
    probes the admin port instead."""
    (tmp_path / "Dockerfile").write_bytes((REPO / "Dockerfile").read_bytes())
    report = checkov(tmp_path, "--skip-check", "CKV_DOCKER_2", framework="dockerfile")
    assert failures(report) == []
    assert report["summary"]["passed"] > 10, report["summary"]
    assert "CKV_DOCKER_2" in (REPO / "Dockerfile").read_text()
