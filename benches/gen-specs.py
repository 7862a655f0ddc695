#!/usr/bin/env python3
"""Writes a folder of trunkline specs at scale for the `check` benchmark.

usage: gen-specs.py OUT_DIR [--trunks N] [--numbers-per-trunk M] [--files F] [--bench-agent HOST:PORT]

Trunks alternate between digest (with a Secret) and address-only authentication; every number
is unique, so the folder compiles clean; a few outbound trunks and transfer destinations are
added so every kind is present.

With --bench-agent, the file in the middle of the folder also holds InboundTrunk `bench-in`
(namespace `bench`): address-only for 127.0.0.1, number +19990000000 to the agent runtime at
HOST:PORT, for benches that place calls (benches/config-scale.sh edits it while calls run).
"""
import argparse
import os

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--trunks", type=int, default=10_000)
p.add_argument("--numbers-per-trunk", type=int, default=10)
p.add_argument("--files", type=int, default=100)
p.add_argument("--bench-agent")
a = p.parse_args()

BENCH_TRUNK = """apiVersion: trunkline.dev/v1alpha1
kind: InboundTrunk
metadata: {{name: bench-in, namespace: bench}}
spec:
  numbers:
    - {{number: "+19990000000", agent: bench}}
  destination: {{uri: "sip:{agent};transport=udp"}}
  auth:
    allowedAddresses: ["127.0.0.1/32"]
  codecs: [PCMU, PCMA]"""

os.makedirs(a.out, exist_ok=True)
per_file = max(1, a.trunks // a.files)
number = 14150000000
for f in range(a.files):
    docs = []
    for t in range(f * per_file, min(a.trunks, (f + 1) * per_file)):
        ns = f"team-{t % 50}"
        nums = []
        for _ in range(a.numbers_per_trunk):
            number += 1
            nums.append(f'    - {{number: "+{number}", agent: agent-{number % 97}}}')
        if t % 2 == 0:
            auth = f"    digest: {{secretRef: {{name: trunk-{t}-creds}}}}\n    allowedAddresses: [\"203.0.{t % 256}.0/24\"]"
            docs.append(
                f"apiVersion: v1\nkind: Secret\nmetadata: {{name: trunk-{t}-creds, namespace: {ns}}}\n"
                f"type: kubernetes.io/basic-auth\nstringData: {{username: trunk-{t}, password: pw-{t}}}"
            )
        else:
            auth = f"    allowedAddresses: [\"198.{t % 200}.{t % 256}.{t % 250 + 1}\"]"
        docs.append(
            "apiVersion: trunkline.dev/v1alpha1\nkind: InboundTrunk\n"
            f"metadata: {{name: trunk-{t}, namespace: {ns}}}\nspec:\n  numbers:\n" + "\n".join(nums) + "\n"
            f"  destination: {{uri: \"sip:agents.{ns}.svc:5070;transport=tcp\"}}\n"
            f"  auth:\n{auth}\n  codecs: [PCMU, PCMA]\n  limits: {{maxConcurrentCalls: 100}}"
        )
    if a.bench_agent and f == a.files // 2:
        docs.append(BENCH_TRUNK.format(agent=a.bench_agent))
    with open(os.path.join(a.out, f"trunks-{f:04}.yaml"), "w") as fh:
        fh.write("\n---\n".join(docs) + "\n")

with open(os.path.join(a.out, "outbound.yaml"), "w") as fh:
    docs = []
    for i in range(50):
        docs.append(
            f"apiVersion: trunkline.dev/v1alpha1\nkind: OutboundTrunk\nmetadata: {{name: out, namespace: team-{i}}}\n"
            f"spec: {{host: sip.carrier.example, callerId: \"+14155550100\"}}"
        )
        docs.append(
            f"apiVersion: trunkline.dev/v1alpha1\nkind: TransferDestination\nmetadata: {{name: desk, namespace: team-{i}}}\n"
            f"spec: {{type: Phone, phone: {{number: \"+14155550199\", outboundTrunkRef: {{name: out}}}}}}"
        )
    fh.write("\n---\n".join(docs) + "\n")
