# The benchmarks' one InboundTrunk, shared by inbound-cps.sh, flood.sh, callgrind-invite.sh and
# concurrent-calls.sh so that they measure the same trunk: digest with a basic-auth Secret
# ($AUTH_USER/$AUTH_PASS), the number +$NUMBER to agent `bench` at 127.0.0.1:$UAS_PORT, UDP,
# PCMU and PCMA.
#
#   bench_spec FILE WRITER [ALLOWLIST]
# writes FILE (a comment names WRITER); ALLOWLIST, e.g. 127.0.0.0/8, adds `allowedAddresses`
# beside the digest (the calls/s benchmarks); without it the trunk is digest only (the flood
# benchmark, where every source must answer the challenge).
bench_spec() {
  local file=$1 writer=$2 allow=${3:-}
  {
    printf '# written by %s\n' "$writer"
    printf '%s\n' \
      "apiVersion: v1" \
      "kind: Secret" \
      "metadata: {name: bench-credentials, namespace: bench}" \
      "type: kubernetes.io/basic-auth" \
      "stringData: {username: $AUTH_USER, password: $AUTH_PASS}" \
      "---" \
      "apiVersion: trunkline.dev/v1alpha1" \
      "kind: InboundTrunk" \
      "metadata: {name: bench-in, namespace: bench}" \
      "spec:" \
      "  numbers:" \
      "    - {number: \"+$NUMBER\", agent: bench}" \
      "  destination:" \
      "    uri: \"sip:127.0.0.1:$UAS_PORT\"" \
      "  auth:" \
      "    digest:" \
      "      secretRef: {name: bench-credentials}"
    if [ -n "$allow" ]; then
      printf '    allowedAddresses: ["%s"]\n' "$allow"
    fi
    printf '%s\n' \
      "  transports: [UDP]" \
      "  codecs: [PCMU, PCMA]"
  } > "$file"
}
