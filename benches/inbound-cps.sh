#!/usr/bin/env bash
# Benchmark: inbound calls per second through the gateway, next to Kamailio in the same run.
#
#   sipp UAC (carrier: digest auth, 0-1 s calls, benches/inbound-cps/uac.xml)
#     -> system under test on 127.0.0.1
#          trunkline: `trunkline run` on a specs folder written here (one InboundTrunk with
#                     digest + 127.0.0.0/8 allowlist, +15551230001 -> agent `bench`), a B2BUA
#          kamailio:  a digest-authenticating stateful proxy (benches/inbound-cps/kamailio.cfg.in)
#     -> sipp UAS (agent runtime, benches/inbound-cps/uas.xml)
#
# Each step runs RATE calls/s for DUR s (sipp -m RATE*DUR, bounded by a timeout), with a fresh
# SUT and UAS. Search per system: from --start double the rate with short steps until one
# fails, confirm the last passing rate with a full-length step, then bisect with full-length
# steps to --resolution. A step passes with < --fail-max % calls not completed (any failure:
# a 4xx/5xx, a timeout, a lost message) and >= 95 % of the asked rate achieved by sipp.
# A failed step during which unrelated processes used > --noise-max % of a core is repeated
# once. The systems alternate: run 1 trunkline, run 1 kamailio, run 2 trunkline, ...; medians
# of the runs. The searches share a time budget (--max-minutes): a search whose share is used
# up stops bisecting and reports its last passing rate. CPU per call: the SUT's utime+stime
# over the step / calls, at the highest rate of the doubling phase that both systems passed
# in that run with retransmissions < 1 % of the calls (the same load for both), and at each
# system's best rate. Per step the UDP drops of each socket (SUT, UAC, UAS) are recorded.
#
# Everything runs on 127.0.0.1; the load generators share the machine's cores with the SUT.
# The script installs what it misses (Debian: sip-tester, kamailio, python3, iproute2),
# builds the release binary, and stops everything it started on exit.
# Ports on 127.0.0.1 (--base-port, --rtp-ports): SIP 7060-7090, sipp media 8060 and 8160,
# trunkline's RTP relays 20000-31999; checked free before each step.
# Output: benches/out/inbound-cps/<time>/ (steps.tsv, per-step sipp logs, summary.md).
# The last line printed:
#   RESULT trunkline_cps=... kamailio_cps=... ratio=... trunkline_cpu_ms_per_call=...
#          kamailio_cpu_ms_per_call=... cpu_ratio=... cpu_at_cps=... ...
#
# usage: benches/inbound-cps.sh [--quick] [options]     (--help lists them)
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BENCH=inbound-cps
HERE=$ROOT/benches/inbound-cps
source "$ROOT/benches/lib/cps.sh"   # options, processes, steps, search, summary
source "$ROOT/benches/lib/spec.sh"   # bench_spec: the one InboundTrunk every benchmark measures

cps_defaults
NUMBER=15551230001
AUTH_USER=carrier
AUTH_PASS=s3cret-carrier

cps_parse_args "$@"
cps_enter_autogroup "$@"
cps_install
cps_prepare

# --- ports (all on 127.0.0.1)
GW_PORT=$BASE_PORT                 # trunkline carrier side
KAM_PORT=$((BASE_PORT + 1))        # kamailio
GW_INTERNAL=$((BASE_PORT + 2))     # trunkline agent side
UAC_PORT=$((BASE_PORT + 10))
UAS_PORT=$((BASE_PORT + 20))
ADMIN_PORT=$((BASE_PORT + 30))     # trunkline admin (TCP)
UAC_MEDIA=$((BASE_PORT + 1000))
UAS_MEDIA=$((BASE_PORT + 1100))
PORTS_UDP="$GW_PORT $KAM_PORT $GW_INTERNAL $UAC_PORT $UAS_PORT $UAC_MEDIA $UAS_MEDIA"
PORTS_TCP=$ADMIN_PORT
ports_free

# --- the trunkline side: a specs folder and a state folder of its own
SPECS=$OUT/specs
mkdir -p "$SPECS" "$OUT/state" && chmod 700 "$OUT/state"
bench_spec "$SPECS/bench.yaml" benches/inbound-cps.sh 127.0.0.0/8
"$BIN" check "$SPECS" > "$OUT/check.txt" 2>&1 || { cat "$OUT/check.txt" >&2; die "trunkline check refused the bench specs"; }

sed -e "s#@CHILDREN@#$KAM_CHILDREN#g; s#@LISTEN_IP@#127.0.0.1#g; s#@LISTEN_PORT@#$KAM_PORT#g; \
        s#@UAS_IP@#127.0.0.1#g; s#@UAS_PORT@#$UAS_PORT#g; s#@REALM@#kamailio#g; \
        s#@USER@#$AUTH_USER#g; s#@PASSWORD@#$AUTH_PASS#g; s#@NUMBER@#$NUMBER#g" \
    "$HERE/kamailio.cfg.in" > "$OUT/kamailio.cfg"
kamailio -c -f "$OUT/kamailio.cfg" > "$OUT/kamailio-check.txt" 2>&1 \
  || { tail -20 "$OUT/kamailio-check.txt" >&2; die "kamailio refused $OUT/kamailio.cfg"; }

start_sut() {  # start_sut SYSTEM: a fresh SUT; SUT_PID, SUT_TARGET and SUT_PORTS set
  case "$1" in
    trunkline)
      RUST_LOG=warn "$BIN" run --specs "$SPECS" --listen "udp://127.0.0.1:$GW_PORT" \
        --internal-listen "udp://127.0.0.1:$GW_INTERNAL" --admin "127.0.0.1:$ADMIN_PORT" \
        --state-dir "$OUT/state" --agent-timeout 10 --drain-timeout 1 --rtp-ports "$RTP_PORTS" \
        >> "$OUT/trunkline.log" 2>&1 &
      SUT_PID=$!
      SUT_TARGET=127.0.0.1:$GW_PORT
      SUT_PORTS="sut=$GW_PORT,sut_internal=$GW_INTERNAL"
      wait_udp "$SUT_PID" "$GW_PORT" "$GW_INTERNAL" && sleep 0.2 && kill -0 "$SUT_PID" 2>/dev/null \
        || { tail -20 "$OUT/trunkline.log" >&2; die "trunkline did not start"; }
      ;;
    kamailio)
      kamailio -f "$OUT/kamailio.cfg" -DD -E -m "$KAM_SHM_MB" -M 16 -P "$OUT/kamailio.pid" \
        >> "$OUT/kamailio.log" 2>&1 &
      SUT_PID=$!
      SUT_TARGET=127.0.0.1:$KAM_PORT
      SUT_PORTS="sut=$KAM_PORT"
      wait_udp "$SUT_PID" "$KAM_PORT" && sleep 0.3 && kill -0 "$SUT_PID" 2>/dev/null \
        || { tail -20 "$OUT/kamailio.log" >&2; die "kamailio did not start"; }   # (0.3 s: the workers fork)
      ;;
  esac
}

# --- the sipp peers: the agent runtime answers (UAS); the carrier calls with digest (UAC)
UAS_XML=$HERE/uas.xml
uac_args() {
  UAC_ARGS=(-sf "$HERE/uac.xml" -s "$NUMBER" -au "$AUTH_USER" -ap "$AUTH_PASS"
            -auth_uri "$NUMBER@$SUT_TARGET")  # sipp prepends sip: (the digest uri is the Request-URI)
}

cps_record_setup
cps_single_calls
cps_run
