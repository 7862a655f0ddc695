"""The README's Kubernetes documentation: its code blocks are closed (an unclosed fence once
turned the whole GitOps section into code), and its Argo CD health check, run in Lua on trunk
statuses, says Healthy only when the operator has read the current generation, the object is
accepted with its references resolved, and the gateways run it."""

from __future__ import annotations

import re
from typing import Any

import lupa
import pytest

from conftest import REPO

README = (REPO / "README.md").read_text()


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block; fails on a fence that is never closed."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^\s*(```+)\s*(\S*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, info = opening.groups()
        for j in range(i + 1, len(lines)):
            if re.match(rf"^\s*{fence}\s*$", lines[j]):
                blocks.append((info, "\n".join(lines[i + 1:j])))
                i = j + 1
                break
        else:
            raise AssertionError(f"README.md line {i + 1}: the ``` block is never closed")
    return blocks


def test_every_code_block_is_closed_and_no_heading_is_swallowed():
    blocks = code_blocks(README)
    assert len(blocks) > 10
    for info, body in blocks:
        # A Markdown heading inside a code block means a fence above it was left open.
        if info not in ("sh", "console", "yaml", "lua", ""):
            continue
        for line in body.splitlines():
            assert not re.match(r"^#{2,3} [A-Z`]", line), f"heading inside a code block: {line}"


def test_the_kubernetes_sections_are_headings():
    headings = re.findall(r"^#{2,3} (.+)$", README, re.M)
    for heading in ["On Kubernetes", "Install with Helm", "GitOps", "CRDs",
                    "Media path: how a carrier's audio reaches the right pod", "Least privilege",
                    "Lifecycle: upgrade, rename, uninstall", "Several fleets in one cluster"]:
        assert heading in headings, heading


def health_check():
    (script,) = [body for info, body in code_blocks(README) if info == "lua"]
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    check = runtime.eval(f"function(obj)\n{script}\nend")

    def run(obj: dict[str, Any]) -> tuple[str, str]:
        result = check(to_lua(runtime, obj))
        return result["status"], result["message"]
    return run


def to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def trunk(generation: int, observed: int | None, **conditions: tuple[str, str]) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [
        {"type": t, "status": s, "reason": r, "message": f"{t} says {r}",
         "observedGeneration": observed or 0}
        for t, (s, r) in conditions.items()]}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"generation": generation}, "status": status}


OK = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


@pytest.mark.parametrize("obj,expected", [
    ({"metadata": {"generation": 1}}, "Progressing"),
    (trunk(2, 1, **OK, Programmed=("True", "Programmed")), "Progressing"),
    (trunk(2, 2, **OK, Programmed=("True", "Programmed")), "Healthy"),
    (trunk(2, 2, **OK, Programmed=("False", "Pending")), "Progressing"),
    (trunk(2, 2, Accepted=("False", "NumberConflict"), ResolvedRefs=("True", "ResolvedRefs"),
           Programmed=("False", "NumberConflict")), "Degraded"),
    # A missing Secret: accepted, but a reference does not resolve. Never Progressing forever.
    (trunk(2, 2, Accepted=("True", "Accepted"), ResolvedRefs=("False", "SecretNotFound"),
           Programmed=("False", "SecretNotFound")), "Degraded"),
], ids=["no status", "old generation", "programmed", "pending", "refused", "missing secret"])
def test_the_argo_cd_health_check_reads_every_condition_and_the_generation(obj, expected):
    status, message = health_check()(obj)
    assert status == expected, message
    if expected == "Degraded":
        assert "says" in message  # the condition's own message is shown
