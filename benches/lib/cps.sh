# shellcheck shell=bash
# Shared machinery of the calls-per-second benchmarks (benches/inbound-cps.sh,
# benches/outbound-cps.sh); sourced by them, not run. It holds what they do alike: options, the
# benchmark's own niced scheduler autogroup, installing what is missing, the output folder,
# starting and stopping processes, one measured step (benches/lib/cps_measure.py), the rate
# search, the alternation of systems under a shared time budget, and the summary.
#
# A script that sources it sets BENCH (its name), HERE (its scenario folder) and ROOT, calls
# cps_defaults, may change the defaults, calls cps_parse_args "$@", then defines:
#   start_sut SYSTEM   starts a fresh system under test; sets SUT_PID, SUT_TARGET (host:port the
#                      UAC sends to) and SUT_PORTS ("sut=PORT[,sut_NAME=PORT...]": the SUT's UDP
#                      sockets whose kernel drops are recorded; every name starting with `sut`
#                      counts as the SUT's)
#   uac_args           sets the array UAC_ARGS: the scenario's own sipp UAC arguments (-sf, -s,
#                      -au ...), after start_sut (it may use SUT_TARGET)
# and the variables UAS_XML (the UAS scenario), UAS_ARGS (array: its extra sipp arguments) and
# PORTS_UDP / PORTS_TCP (every port of a step, checked free before each).
# SYSTEMS lists the systems (trunkline, kamailio); the summary knows these two.

cps_defaults() {
  REPS=3
  START=200
  MAXRATE=20000
  COARSE_DUR=5
  DUR=10
  RESOLUTION=0.05
  FAIL_MAX=1.0
  NOISE_MAX=25
  NOISE_RETRIES=1
  QUIET_WAIT=5
  MAX_MINUTES=20
  BASE_PORT=7060
  RTP_PORTS=20000-31999
  KAM_CHILDREN=2
  KAM_SHM_MB=2048
  BUILD=1
  SYSTEMS="trunkline kamailio"
  OUT=
  UAS_ARGS=()
  UAC_ARGS=()
}

cps_usage() {
  # the script's header comment (after the #! line), then the common options
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  cat <<EOF
options:
  --quick             one run, 3 s / 5 s steps, 10 % resolution (about 5 minutes)
  --runs N            repetitions per system (default $REPS)
  --start R           first rate of the doubling phase (default $START)
  --max R             highest rate tried (default $MAXRATE)
  --coarse-dur S      length of a doubling step (default $COARSE_DUR)
  --dur S             length of a confirming / bisecting step (default $DUR)
  --resolution F      stop bisecting when hi-lo <= F*lo (default $RESOLUTION)
  --fail-max PCT      a step passes with fewer failed calls than this (default $FAIL_MAX)
  --noise-max PCT     unrelated CPU (% of a core) above which a failed step is repeated
                      (default $NOISE_MAX; repeated at most $NOISE_RETRIES time(s))
  --quiet-wait S      before each step, wait up to S s for the machine to be < 20 % busy
  --max-minutes M     time budget of the searches, shared out among them: a search
                      stops bisecting when its share is used up (default $MAX_MINUTES)
  --base-port P       UDP ports P..P+20, P+1000, P+1100 and TCP P+30 on 127.0.0.1 (default $BASE_PORT)
  --rtp-ports LO-HI   trunkline's --rtp-ports (default $RTP_PORTS; pairs others hold are skipped)
  --only SYSTEM       trunkline or kamailio
  --kamailio-children N   Kamailio UDP workers (default $KAM_CHILDREN: one per core)
  --kamailio-shm MB   Kamailio shared memory (default $KAM_SHM_MB)
  --no-build          use target/release/trunkline as it is
  --bin PATH          use this trunkline binary (implies --no-build; e.g. the bench-profile
                      build, target/bench-profile/trunkline: release code with line tables)
  --outdir DIR        where logs and results go
environment: BENCH_NICE (default -10): nice of the benchmark's scheduler autogroup; 0 = off
EOF
}

cps_parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --quick) REPS=1; COARSE_DUR=3; DUR=5; RESOLUTION=0.10; QUIET_WAIT=5; MAX_MINUTES=6 ;;
      --runs) REPS=$2; shift ;;
      --start) START=$2; shift ;;
      --max) MAXRATE=$2; shift ;;
      --coarse-dur) COARSE_DUR=$2; shift ;;
      --dur) DUR=$2; shift ;;
      --resolution) RESOLUTION=$2; shift ;;
      --fail-max) FAIL_MAX=$2; shift ;;
      --noise-max) NOISE_MAX=$2; shift ;;
      --quiet-wait) QUIET_WAIT=$2; shift ;;
      --max-minutes) MAX_MINUTES=$2; shift ;;
      --base-port) BASE_PORT=$2; shift ;;
      --rtp-ports) RTP_PORTS=$2; shift ;;
      --only) SYSTEMS=$2; shift ;;
      --kamailio-children) KAM_CHILDREN=$2; shift ;;
      --kamailio-shm) KAM_SHM_MB=$2; shift ;;
      --no-build) BUILD=0 ;;
      --bin) BIN_ARG=$2; BUILD=0; shift ;;
      --outdir) OUT=$2; shift ;;
      -h|--help) cps_usage; exit 0 ;;
      *) echo "unknown option: $1" >&2; cps_usage >&2; exit 2 ;;
    esac
    shift
  done
}

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Runs the script again in its own scheduler autogroup, niced, so other work on a shared machine
# (builds) disturbs the measurement less (with CONFIG_SCHED_AUTOGROUP, per-process nice does not
# act across sessions; an autogroup's nice does). Call it with the script's arguments.
cps_enter_autogroup() {
  local child rc
  if [ "${BENCH_NICE:--10}" != 0 ] && [ -z "${CPS_BENCH_CHILD:-}" ] && [ -w /proc/self/autogroup ] \
     && command -v setsid >/dev/null; then
    export CPS_BENCH_CHILD=1
    setsid bash "$0" "$@" &
    child=$!
    trap 'kill -TERM $child 2>/dev/null' INT TERM
    wait $child; rc=$?
    while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done
    exit $rc
  fi
  if [ -n "${CPS_BENCH_CHILD:-}" ]; then
    echo "${BENCH_NICE:--10}" > /proc/self/autogroup 2>/dev/null || log "note: could not renice the autogroup"
  fi
}

# Installs what the benchmarks need (Debian: sip-tester, kamailio, python3, iproute2), and the
# extra COMMAND:PACKAGE pairs given (e.g. rtpengine:rtpengine-daemon).
cps_install() {
  local need=() made_policy rc extra
  command -v sipp >/dev/null || need+=(sip-tester)
  command -v kamailio >/dev/null || need+=(kamailio)
  command -v python3 >/dev/null || need+=(python3)
  command -v ss >/dev/null || need+=(iproute2)
  for extra in "$@"; do command -v "${extra%%:*}" >/dev/null || need+=("${extra#*:}"); done
  [ ${#need[@]} -gt 0 ] || return 0
  log "installing ${need[*]}"
  [ "$(id -u)" = 0 ] || die "missing ${need[*]}: run as root or install them (apt-get install ${need[*]})"
  # keep the package's own kamailio service from starting: the benchmark starts its own
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  rc=$?
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || die "apt-get install ${need[*]} failed"
}

# Builds the release binary (unless --no-build), makes the output folder; sets BIN, OUT, STEPS.
cps_prepare() {
  BIN=${BIN_ARG:-$ROOT/target/release/trunkline}
  if [ "$BUILD" = 1 ]; then
    log "cargo build --release"
    cargo build --release --quiet || die "cargo build --release failed"
  fi
  [ -x "$BIN" ] || die "$BIN not found (build it, or drop --no-build)"
  OUT=${OUT:-$ROOT/benches/out/$BENCH/$(date +%Y%m%d-%H%M%S)}
  mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
  STEPS=$OUT/steps.tsv
  : > "$STEPS"
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  SUT_PID='' UAS_PID='' MEASURE_PID=''
  trap cps_cleanup EXIT
  trap 'exit 130' INT TERM
}

ports_free() {  # the ports of a step are free (checked before each step: others may take them)
  local p holder waited
  for ((waited = 0; waited <= 10; waited++)); do
    holder=
    for p in $PORTS_UDP; do
      ss -Hlun "sport = :$p" | grep -q . && { holder="UDP $p: $(ss -Hlunp "sport = :$p" | grep -o 'users:.*' | head -1)"; break; }
    done
    if [ -z "$holder" ]; then
      for p in $PORTS_TCP; do
        ss -Hltn "sport = :$p" | grep -q . && { holder="TCP $p"; break; }
      done
    fi
    [ -z "$holder" ] && return 0
    sleep 1
  done
  die "port in use by another program ($holder); pick other ports with --base-port"
}

# --- processes: everything started here is stopped on exit
stop_pid() {  # TERM, wait up to $2 s (default 5), then KILL
  local pid=$1 t=${2:-5} i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < t * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
cps_cleanup() {
  trap '' INT TERM
  stop_pid "$MEASURE_PID" 8; MEASURE_PID=   # it stops its sipp UAC
  stop_pid "$UAS_PID"; UAS_PID=
  stop_pid "$SUT_PID" 10; SUT_PID=
}

wait_udp() {  # wait_udp PID PORT...: until the process listens on all ports (5 s)
  local pid=$1 i p ok; shift
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    ok=1
    for p in "$@"; do ss -Hlun "sport = :$p" | grep -q . || ok=0; done
    [ $ok = 1 ] && return 0
    sleep 0.05
  done
  return 1
}

start_uas() {  # start_uas TAG: the sipp UAS (UAS_XML, UAS_ARGS) on UAS_PORT
  sipp -sf "$UAS_XML" -i 127.0.0.1 -p "$UAS_PORT" -mp "$UAS_MEDIA" -nostdin \
    -buff_size 4194304 -timeout "$((DUR + 120))s" -trace_err -error_file "$OUT/$1.uas.err" \
    -max_log_size 5000000 ${UAS_ARGS[@]+"${UAS_ARGS[@]}"} > "$OUT/$1.uas.out" 2>&1 &
  UAS_PID=$!
  wait_udp "$UAS_PID" "$UAS_PORT" || { tail -20 "$OUT/$1.uas.out" >&2; die "the sipp UAS did not start"; }
}

machine_busy() {  # % of the whole machine busy over 1 s
  python3 - <<'PY'
import time
def rd():
    v = [int(x) for x in open('/proc/stat').readline().split()[1:]]
    return sum(v[:8]), v[3] + v[4]
a = rd(); time.sleep(1); b = rd()
print(int(100 * (1 - (b[1] - a[1]) / max(b[0] - a[0], 1))))
PY
}

wait_quiet() {  # up to QUIET_WAIT s for the machine to be < 20 % busy
  local waited=0 b
  while :; do
    b=$(machine_busy)
    [ "$b" -lt 20 ] && return 0
    [ "$waited" -ge "$QUIET_WAIT" ] && { log "note: machine still ${b}% busy with other work"; return 0; }
    waited=$((waited + 1))
  done
}

# run_step SYSTEM REP RATE DUR: one measured step; 0 = pass
run_step() {
  local sys=$1 rep=$2 rate=$3 dur=$4 calls tag tmo rc
  calls=$((rate * dur))
  tmo=$((dur + 20))
  tag=$sys-run$rep-r$rate-d$dur-$(date +%H%M%S)
  wait_quiet
  ports_free
  start_sut "$sys"
  start_uas "$tag"
  uac_args
  ( cd "$OUT" && exec python3 "$ROOT/benches/lib/cps_measure.py" step --system "$sys" --rep "$rep" \
      --rate "$rate" --dur "$dur" --calls "$calls" --fail-max "$FAIL_MAX" --noise-max "$NOISE_MAX" \
      --sut-pid "$SUT_PID" --uas-pid "$UAS_PID" --csv "$OUT/$tag.uac.csv" --timeout "$tmo" \
      --steps "$STEPS" --sipp-log "$OUT/$tag.uac.out" --sut-log "$OUT/$sys.log" \
      --ports "$SUT_PORTS,uac=$UAC_PORT,uas=$UAS_PORT" -- \
      sipp "$SUT_TARGET" "${UAC_ARGS[@]}" -i 127.0.0.1 -p "$UAC_PORT" -mp "$UAC_MEDIA" \
        -r "$rate" -m "$calls" -l 200000 -nostdin -buff_size 4194304 \
        -recv_timeout 5s -timeout "$((dur + 15))s" \
        -trace_stat -fd 1 -stf "$OUT/$tag.uac.csv" \
        -trace_err -error_file "$OUT/$tag.uac.err" -max_log_size 5000000 \
        -trace_screen -screen_file "$OUT/$tag.uac.screen" ) \
    > "$OUT/last_step.txt" 2> "$OUT/$tag.measure.err" &
  MEASURE_PID=$!
  wait "$MEASURE_PID"; rc=$?
  MEASURE_PID=
  stop_pid "$UAS_PID"; UAS_PID=
  stop_pid "$SUT_PID" 10; SUT_PID=
  LAST_LINE="$sys run=$rep $(cat "$OUT/last_step.txt")"
  return $rc
}

out_of_time() { [ "$(date +%s)" -ge "$SEARCH_END" ]; }

step() {  # step SYSTEM REP RATE DUR: a failed step disturbed by other work is repeated
  local try rc
  for ((try = 0; try <= NOISE_RETRIES; try++)); do
    run_step "$@"; rc=$?
    case "$LAST_LINE" in
      *FAIL+NOISY*) [ $try -lt "$NOISE_RETRIES" ] && { log "$LAST_LINE (noisy: repeating)"; continue; } ;;
    esac
    break
  done
  log "$LAST_LINE"
  return $rc
}

search() {  # search SYSTEM REP -> BEST: the highest passing rate
  local sys=$1 rep=$2 lo=0 hi=0 r=$START mid
  # doubling phase (short steps); below --start when even that fails
  while :; do
    if step "$sys" "$rep" "$r" "$COARSE_DUR"; then
      lo=$r
      [ "$r" -ge "$MAXRATE" ] || [ "$hi" -gt 0 ] && break
      r=$((r * 2)); [ "$r" -gt "$MAXRATE" ] && r=$MAXRATE
    else
      hi=$r
      [ "$lo" -gt 0 ] && break
      r=$((r / 2)); [ "$r" -lt 10 ] && break
    fi
  done
  # confirm at full length; go down while it does not hold
  while [ "$lo" -gt 0 ]; do
    step "$sys" "$rep" "$lo" "$DUR" && break
    hi=$lo; lo=$((lo / 2)); [ "$lo" -lt 10 ] && lo=0
  done
  # bisect at full length
  while [ "$lo" -gt 0 ] && [ "$hi" -gt 0 ] \
        && { ! out_of_time || { log "$sys run $rep: time share used up, stopping at $lo..$hi"; false; }; } \
        && python3 -c "import sys; sys.exit(0 if $hi - $lo > max(10, $RESOLUTION * $lo) else 1)"; do
    mid=$(( (lo + hi) / 2 / 10 * 10 ))
    [ "$mid" -le "$lo" ] && break
    if step "$sys" "$rep" "$mid" "$DUR"; then lo=$mid; else hi=$mid; fi
  done
  BEST=$lo
}

# Writes the set-up (versions, machine, options) to summary.md and stderr.
cps_record_setup() {
  local git_rev
  git_rev=$(git describe --always --dirty 2>/dev/null || echo unknown)
  {
    echo "# $(date -Is) $BENCH: runs=$REPS start=$START coarse_dur=${COARSE_DUR}s dur=${DUR}s resolution=$RESOLUTION fail_max=$FAIL_MAX% kamailio_children=$KAM_CHILDREN autogroup_nice=${BENCH_NICE:--10}"
    echo "# trunkline: $git_rev ($("$BIN" --version 2>/dev/null | head -1))"
    echo "# kamailio: $(kamailio -v 2>/dev/null | head -1 | sed 's/^version: //')"
    echo "# sipp: $(sipp -v 2>/dev/null | grep -m1 SIPp | sed 's/^ *//')"
    echo "# machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    echo "# output: $OUT"
  } | tee "$OUT/summary.md" >&2
}

# One call through each system first: the set-up works, or stop here.
cps_single_calls() {
  local sys tag rc
  for sys in $SYSTEMS; do
    tag=$sys-single-call
    ports_free
    start_sut "$sys"
    start_uas "$tag"
    uac_args
    ( cd "$OUT" && timeout -k 2 20 sipp "$SUT_TARGET" "${UAC_ARGS[@]}" -i 127.0.0.1 -p "$UAC_PORT" \
        -mp "$UAC_MEDIA" -m 1 -r 1 -nostdin -recv_timeout 5s -timeout 15s \
        -trace_err -error_file "$OUT/$tag.uac.err" -trace_msg -message_file "$OUT/$tag.uac.msg" ) \
      > "$OUT/$tag.uac.out" 2>&1
    rc=$?
    stop_pid "$UAS_PID"; UAS_PID=
    stop_pid "$SUT_PID" 10; SUT_PID=
    if [ $rc != 0 ]; then
      log "a single call through $sys failed (sipp exit $rc); messages: $OUT/$tag.uac.msg"
      tail -30 "$OUT/$tag.uac.err" >&2 2>/dev/null
      tail -30 "$OUT/$tag.uas.err" >&2 2>/dev/null
      die "single-call check through $sys failed"
    fi
    log "single call through $sys: ok"
  done
}

# The searches, systems alternating; each gets an equal share of the time left. Then the summary,
# whose last line is the RESULT line.
cps_run() {
  local n_sys left rep sys now
  T_END=$(( $(date +%s) + MAX_MINUTES * 60 ))
  SEARCH_END=$T_END
  n_sys=$(echo $SYSTEMS | wc -w)
  left=$((REPS * n_sys))
  for ((rep = 1; rep <= REPS; rep++)); do
    for sys in $SYSTEMS; do
      now=$(date +%s)
      SEARCH_END=$(( now + (T_END > now ? T_END - now : 0) / left ))
      left=$((left - 1))
      log "== $sys, run $rep of $REPS"
      search "$sys" "$rep"
      log "== $sys, run $rep: $BEST calls/s"
    done
  done

  find "$OUT" -maxdepth 1 -name '*.err' -empty -delete 2>/dev/null
  log "steps: $STEPS"
  {
    echo
    echo "Every step (tab-separated): $STEPS"
    echo
    python3 "$ROOT/benches/lib/cps_measure.py" summary --steps "$STEPS" --dur "$DUR" --coarse-dur "$COARSE_DUR"
  } | tee -a "$OUT/summary.md"
}
