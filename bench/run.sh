#!/usr/bin/env bash
# Benchmark Tubes beside a raw TCP relay (socat) and the npm piping-server.
# Usage: bench/run.sh            (defaults: 1 GiB streams, 10,000 waiters)
#        BENCH_GIB=0.25 BENCH_WAITERS=2000 BENCH_REPS=1 bench/run.sh   (quick)
#        BENCH_ONLY=9 bench/run.sh   (only figure 9; a list works too: BENCH_ONLY=1,9)
#        BENCH_ONLY=10,11 bench/run.sh   (tunnels; WebSocket and live/SSE)
#        BENCH_ONLY=12 bench/run.sh      (10,000 concurrent transfers; the cost of auth)
#        BENCH_ONLY=12 BENCH_CONCURRENT=1000 BENCH_AUTH_N=200 bench/run.sh   (the same, quick)
# See bench/README.md. Scratch files go to bench/out/.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
OUT=$HERE/out
PY=(python3 "$HERE/bench.py")

BENCH_GIB=${BENCH_GIB:-1}            # size of the streamed file, GiB (may be fractional)
BENCH_REPS=${BENCH_REPS:-3}          # repetitions of each stream figure (median shown)
BENCH_WAITERS=${BENCH_WAITERS:-10000} # waiting receivers for the memory figure
BENCH_SETTLE=${BENCH_SETTLE:-12}     # seconds after the waiters leave for the last RSS look
BENCH_LATENCY_N=${BENCH_LATENCY_N:-1000}
BENCH_PAIRS=${BENCH_PAIRS:-1000}
BENCH_SOCAT_BUF=${BENCH_SOCAT_BUF:-65536} # socat -b (curl's upload buffer is 64 KiB too)
BENCH_MAX_TIME=${BENCH_MAX_TIME:-120} # bound on any one transfer, seconds
BENCH_SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
BENCH_H3_THREADS=${BENCH_H3_THREADS:-1} # runtime threads of the h3 client (figure 8)
BENCH_TUNNEL_CONNS=${BENCH_TUNNEL_CONNS:-200} # figure 10: sequential connections timed (plain: a quarter)
BENCH_WS_N=${BENCH_WS_N:-2000}       # figure 11: round trips of a small message
BENCH_LIVE_RECEIVERS=${BENCH_LIVE_RECEIVERS:-1000} # figure 11: live receivers (SSE, then plain)
BENCH_LIVE_RATE=${BENCH_LIVE_RATE:-20} # figure 11: lines per second from the live sender
BENCH_LIVE_SECONDS=${BENCH_LIVE_SECONDS:-10} # figure 11: how long the live sender writes
BENCH_CONCURRENT=${BENCH_CONCURRENT:-10000} # figure 12: transfers at once (2 connections each)
BENCH_AUTH_N=${BENCH_AUTH_N:-1000}   # figure 12: sequential transfers per kind of credentials
BENCH_ONLY=${BENCH_ONLY:-}           # comma-separated figure numbers to run (default: all)
# Extra flags for `tubes serve`, e.g. BENCH_TUBES_ARGS="--threads 1".
read -r -a TUBES_ARGS <<< "${BENCH_TUBES_ARGS:-}"

log() { printf '== %s\n' "$*" >&2; }
# want N...: true if any of these figures is to be run (BENCH_ONLY empty: all).
want() {
    local f
    [[ -z $BENCH_ONLY ]] && return 0
    for f in "$@"; do [[ ",${BENCH_ONLY// /}," == *",$f,"* ]] && return 0; done
    return 1
}
if [[ -n $BENCH_ONLY && ! $BENCH_ONLY =~ ^(1[012]|[1-9])([[:space:]]*,[[:space:]]*(1[012]|[1-9]))*$ ]]; then
    printf 'BENCH_ONLY=%s: give figure numbers 1-12, comma-separated\n' "$BENCH_ONLY" >&2
    exit 2
fi
NEED_NPM=0; want 1 2 3 4 5 6 7 12 && NEED_NPM=1
NEED_FILE=0; want 1 2 6 7 8 10 && NEED_FILE=1
# A measurement that breaks is logged and left out of the table; the run goes on.
measure() { "${PY[@]}" "$@" || log "measurement failed (exit $?): $1 ${*:2}"; }

# ------------------------------------------------------------ cleanup
SERVER_PIDS=()
CLIENT_DIR= # figure 9's temporary data files (in /dev/shm or /tmp)
cleanup() {
    local pid
    if [[ -n $CLIENT_DIR ]]; then rm -rf -- "$CLIENT_DIR"; CLIENT_DIR=; fi
    for pid in "${SERVER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
        # bounded: 50 x 0.1 s, then SIGKILL
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    SERVER_PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ tools
missing=()
command -v socat >/dev/null || missing+=(socat)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
((NEED_NPM)) && { command -v npm >/dev/null || missing+=(nodejs npm); }
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ((NEED_NPM)) && [[ ! -x $ROOT/tests/js/node_modules/.bin/piping-server ]]; then
    log "npm ci --prefix tests/js"
    npm ci --prefix "$ROOT/tests/js" --no-audit --no-fund >&2
fi
if [[ $BENCH_SKIP_BUILD != 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet)
    if want 8; then
        log "cargo build --release --example h3_client"
        (cd "$ROOT" && cargo build --release --quiet --example h3_client)
    fi
fi
TUBES=$ROOT/target/release/tubes
H3_CLIENT=$ROOT/target/release/examples/h3_client
NPM_SERVER=$ROOT/tests/js/node_modules/.bin/piping-server

# ------------------------------------------------------------ limits
hard=$(ulimit -Hn)
[[ $hard == unlimited ]] && hard=1048576
want=$((hard < 65536 ? hard : 65536))
ulimit -n "$want"
if ((BENCH_WAITERS + 200 > want)); then
    log "open-file limit is $want (hard $hard): lowering BENCH_WAITERS from $BENCH_WAITERS to $((want - 200))"
    BENCH_WAITERS=$((want - 200))
fi
# Figure 12: the client and the server each hold 2 x BENCH_CONCURRENT sockets
# (bench.py checks both limits again and says what it used).
if ((2 * BENCH_CONCURRENT + 100 > want)); then
    log "open-file limit is $want (hard $hard): lowering BENCH_CONCURRENT from $BENCH_CONCURRENT to $(((want - 100) / 2))"
    BENCH_CONCURRENT=$(((want - 100) / 2))
fi
if ((BENCH_LIVE_RECEIVERS + 200 > want)); then
    log "open-file limit is $want (hard $hard): lowering BENCH_LIVE_RECEIVERS from $BENCH_LIVE_RECEIVERS to $((want - 200))"
    BENCH_LIVE_RECEIVERS=$((want - 200))
fi

# ------------------------------------------------------------ data file
mkdir -p "$OUT"
MIB=$(python3 -c "print(max(1, round(float('$BENCH_GIB') * 1024)))")
FILE=$OUT/data-${MIB}MiB.bin
if ((NEED_FILE)); then
    if [[ ! -f $FILE || $(stat -c %s "$FILE") -ne $((MIB << 20)) ]]; then
        log "creating $FILE"
        dd if=/dev/urandom of="$FILE.tmp" bs=1M count="$MIB" status=none
        mv "$FILE.tmp" "$FILE"
    fi
    cat "$FILE" >/dev/null # into the page cache
fi

RESULTS=$OUT/results.jsonl
: >"$RESULTS"
rm -f "$OUT"/tubes-*.log "$OUT"/npm-*.log "$OUT"/tunnel-*.log "$OUT"/auth12.* # logs, figure 12's settings
python3 - "$OUT/meta.json" <<EOF
import json, sys, subprocess
def v(*c):
    try:
        return subprocess.run(c, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"
json.dump({"file": "$MIB MiB", "reps": $BENCH_REPS, "waiters": $BENCH_WAITERS,
           "tubes": v("git", "-C", "$ROOT", "describe", "--always", "--dirty"),
           "npm piping-server": v("$NPM_SERVER", "--version") if $NEED_NPM else "(not run)",
           "curl": v("curl", "--version").split()[1], "socat -b": $BENCH_SOCAT_BUF,
           "tubes args": "${BENCH_TUBES_ARGS:-}" or "(none)", "h3_client threads": $BENCH_H3_THREADS,
           **({"tunnel connections": $BENCH_TUNNEL_CONNS} if $(want 10 && echo 1 || echo 0) else {}),
           **({"ws round trips": $BENCH_WS_N, "live": "$BENCH_LIVE_RECEIVERS receivers x $BENCH_LIVE_RATE lines/s x $BENCH_LIVE_SECONDS s"}
              if $(want 11 && echo 1 || echo 0) else {}),
           **({"concurrent": $BENCH_CONCURRENT, "auth transfers": $BENCH_AUTH_N}
              if $(want 12 && echo 1 || echo 0) else {}),
           **({"figures": "$BENCH_ONLY"} if "$BENCH_ONLY" else {})},
          open(sys.argv[1], "w"))
EOF

# ------------------------------------------------------------ servers
# start_server KIND [tls] [more tubes serve flags] -> sets PORT and PID (and,
# with tls, TLSPORT: HTTPS over TCP and HTTP/3 over UDP, self-signed); logs to
# bench/out/KIND-PORT.log
start_server() {
    local kind=$1 tls=()
    shift
    PORT=$("${PY[@]}" freeport)
    TLSPORT=
    if [[ ${1:-} == tls ]]; then
        TLSPORT=$("${PY[@]}" freeport --udp)
        tls=(--https-port "$TLSPORT" --self-signed)
        shift
    fi
    case $kind in
        tubes) "$TUBES" serve --host 127.0.0.1 --http-port "$PORT" "${tls[@]}" "${TUBES_ARGS[@]}" "$@" >"$OUT/$kind-$PORT.log" 2>&1 & ;;
        npm) "$NPM_SERVER" --host 127.0.0.1 --http-port "$PORT" >"$OUT/$kind-$PORT.log" 2>&1 & ;;
    esac
    PID=$!
    SERVER_PIDS+=("$PID")
    if ! "${PY[@]}" waitport "$PORT" 20 || { [[ -n $TLSPORT ]] && ! "${PY[@]}" waitport "$TLSPORT" 20; }; then
        log "$kind did not start; its log:"
        cat "$OUT/$kind-$PORT.log" >&2
        exit 1
    fi
}
stop_server() {
    local pid=$1 rest=() p
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${SERVER_PIDS[@]}"; do [[ $p == "$pid" ]] || rest+=("$p"); done
    SERVER_PIDS=("${rest[@]}")
}

T0=$SECONDS

# 3. memory per waiting receiver, each on a fresh server
want 3 && for kind in tubes npm; do
    log "3. $BENCH_WAITERS waiting receivers on a fresh $kind"
    start_server "$kind"
    measure waiters --out "$RESULTS" --server "$kind" --port "$PORT" --pid "$PID" \
        --count "$BENCH_WAITERS" --settle "$BENCH_SETTLE"
    stop_server "$PID"
done

if want 1 2 4 5 6 7 8 9 10 11; then
    start_server tubes tls; TPORT=$PORT TPID=$PID TTLSPORT=$TLSPORT
fi
if want 1 2 4 5 6 7; then
    start_server npm; NPORT=$PORT NPID=$PID
fi
# Figures 2 and 6 again on a Tubes that keeps the system's congestion
# control on loopback (see docs/operate.md): what the default saves.
if want 2 6; then
    start_server tubes --loopback-congestion system; SPORT=$PORT SPID=$PID
fi
stream_sys() { # MODE [extra args]
    local mode=$1
    shift
    measure stream --out "$RESULTS" --server tubes --mode "$mode" --file "$FILE" \
        --max-time "$BENCH_MAX_TIME" --port "$SPORT" --pid "$SPID" "$@"
}

stream() { # KIND MODE [extra args]
    local kind=$1 mode=$2
    shift 2
    if [[ $kind == tubes ]]; then
        set -- --port "$TPORT" --pid "$TPID" --tls-port "$TTLSPORT" --h3-client "$H3_CLIENT" \
            --h3-threads "$BENCH_H3_THREADS" "$@"
    else
        set -- --port "$NPORT" --pid "$NPID" "$@"
    fi
    measure stream --out "$RESULTS" --server "$kind" --mode "$mode" --file "$FILE" \
        --max-time "$BENCH_MAX_TIME" "$@"
}

# 1 + 2. single stream, repetitions interleaved so that drift hits all alike
want 1 2 && log "1+2. single stream, $MIB MiB, $BENCH_REPS reps: Tubes, socat relay, npm"
want 1 2 && for rep in $(seq "$BENCH_REPS"); do
    stream tubes h1
    measure socat --out "$RESULTS" --file "$FILE" --buf "$BENCH_SOCAT_BUF" --max-time "$BENCH_MAX_TIME"
    stream npm h1
    want 2 && stream_sys h1-sys
done
want 1 && log "1b. the same without curl's Expect: 100-continue"
want 1 && for rep in $(seq "$BENCH_REPS"); do
    stream tubes noexp --no-expect
    stream npm noexp --no-expect
done

# 6. fan-out
want 6 && log "6. n=3 fan-out, $BENCH_REPS reps"
want 6 && for rep in $(seq "$BENCH_REPS"); do
    stream tubes n3 --n 3
    stream npm n3 --n 3
    stream_sys n3-sys --n 3
done

# 7. h2c upload (h1 upload is figure 1, same run)
want 7 && log "7. h2c upload, $BENCH_REPS reps"
npm_h2c=1
want 7 && for rep in $(seq "$BENCH_REPS"); do
    stream tubes h2c --h2c
    if ((npm_h2c)); then
        stream npm h2c --h2c
        # the npm server speaks HTTP/1 only: do not retry a refusal
        tail -1 "$RESULTS" | grep -q '"ok": true' || npm_h2c=0
    fi
done

# 8. TLS and HTTP/3 (plain HTTP/1.1 is figure 1); the npm server has no TLS here
want 8 && log "8. HTTP/1.1+TLS, h2+TLS, h3, $BENCH_REPS reps"
have_h3=1
if want 8 && [[ ! -x $H3_CLIENT ]]; then
    have_h3=0
    log "no $H3_CLIENT (BENCH_SKIP_BUILD=1?): h3 left out; cargo build --release --example h3_client"
fi
want 8 && for rep in $(seq "$BENCH_REPS"); do
    stream tubes tls11 --sender h1tls --receiver h1tls
    stream tubes tls2 --sender h2tls --receiver h2tls
    stream tubes tls2h1 --sender h2tls --receiver h1tls
    # curl's h2 upload is the limit of (c): the same with another h2 sender
    stream tubes tls2t --sender th2tls --receiver h2tls --tubes "$TUBES"
    if ((have_h3)); then
        stream tubes h3 --sender h3 --receiver h3
        stream tubes h3h1 --sender h3 --receiver h1tls
    fi
done

# 9. the tubes client (send/recv) beside curl, through the same tubes serve
if want 9; then
    # A fresh file of random bytes, in RAM (/dev/shm) if there is room.
    bytes9=$((MIB << 20))
    tmpbase=/tmp
    if [[ -d /dev/shm && -w /dev/shm ]] &&
        (($(df -Pk /dev/shm | awk 'NR == 2 {print $4}') * 1024 > bytes9 + (256 << 20))); then
        tmpbase=/dev/shm
    fi
    CLIENT_DIR=$(mktemp -d "$tmpbase/tubes-bench.XXXXXX")
    FILE9=$CLIENT_DIR/data-${MIB}MiB.bin
    TINY9=$CLIENT_DIR/tiny-1KiB.bin
    log "9. client: tubes send/recv beside curl, $MIB MiB in $FILE9, $BENCH_REPS reps"
    dd if=/dev/urandom of="$FILE9" bs=1M count="$MIB" status=none
    head -c 1024 /dev/urandom >"$TINY9"
    server_gone=0
    client() { # MODE FILE TAG
        if ! kill -0 "$TPID" 2>/dev/null; then
            ((server_gone)) || log "tubes serve (pid $TPID) is gone (killed from outside?): rest of figure 9 left out"
            server_gone=1
            return 0
        fi
        measure client --out "$RESULTS" --port "$TPORT" --pid "$TPID" --tubes "$TUBES" \
            --mode "$1" --file "$2" --tag "$3" --max-time "$BENCH_MAX_TIME"
    }
    for rep in $(seq "$BENCH_REPS"); do
        for mode in curl plain code pass; do client "$mode" "$FILE9" big; done
    done
    # The fixed cost of each mode (process start, key exchange, PBKDF2)
    for rep in $(seq "$BENCH_REPS"); do
        for mode in curl plain code pass; do client "$mode" "$TINY9" tiny; done
    done
    rm -rf -- "$CLIENT_DIR"; CLIENT_DIR=
fi

# 10. tunnels through the same tubes serve: throughput beside a direct
# connection, then connection set-up time (tunnel logs: bench/out/tunnel-*.log)
if want 10; then
    log "10. tunnels: $MIB MiB through plain and --mux tunnels beside direct, $BENCH_REPS reps; set-up of $BENCH_TUNNEL_CONNS connections"
    measure tunnel --out "$RESULTS" --port "$TPORT" --pid "$TPID" --tubes "$TUBES" --file "$FILE" \
        --reps "$BENCH_REPS" --conns "$BENCH_TUNNEL_CONNS" --log-dir "$OUT" --max-time "$BENCH_MAX_TIME"
fi

# 11. WebSocket pair round trips beside HTTP and raw TCP; live fan-out, SSE then plain
if want 11; then
    log "11. $BENCH_WS_N round trips: ws=pair, HTTP PUT+GET, raw TCP echo"
    measure wsrtt --out "$RESULTS" --port "$TPORT" --pid "$TPID" --count "$BENCH_WS_N" --max-time 120
    for mode in sse plain; do
        log "11. live fan-out to $BENCH_LIVE_RECEIVERS $mode receivers, $BENCH_LIVE_RATE lines/s for $BENCH_LIVE_SECONDS s"
        measure live --out "$RESULTS" --port "$TPORT" --pid "$TPID" --mode "$mode" \
            --receivers "$BENCH_LIVE_RECEIVERS" --rate "$BENCH_LIVE_RATE" --seconds "$BENCH_LIVE_SECONDS"
    done
fi

# 4. latency, 5. simultaneous pairs
for kind in tubes npm; do
    if [[ $kind == tubes ]]; then port=${TPORT:-}; else port=${NPORT:-}; fi
    if want 4; then
        log "4. latency, $BENCH_LATENCY_N sequential 10-byte transfers: $kind"
        measure latency --out "$RESULTS" --server "$kind" --port "$port" \
            --count "$BENCH_LATENCY_N" --max-time 120
    fi
    if want 5; then
        log "5. $BENCH_PAIRS simultaneous pairs: $kind"
        measure pairs --out "$RESULTS" --server "$kind" --port "$port" \
            --count "$BENCH_PAIRS" --max-time 60
    fi
done

# 12. many transfers at once, each on a fresh server (defaults: no per-address
# limits, max_paths 100000); then the cost of auth: tubes serve without
# [auth] beside one with figure 12's settings file (bench/out/auth12.toml)
if want 12; then
    for kind in tubes npm; do
        log "12. $BENCH_CONCURRENT concurrent transfers on a fresh $kind"
        start_server "$kind"
        measure concurrent --out "$RESULTS" --server "$kind" --port "$PORT" --pid "$PID" \
            --count "$BENCH_CONCURRENT" --max-time 120
        stop_server "$PID"
    done
    log "12. cost of auth: $BENCH_AUTH_N sequential transfers each without auth, open path, token, JWT, Basic"
    "${PY[@]}" authconfig --dir "$OUT"
    start_server tubes; PLAIN12_PORT=$PORT PLAIN12_PID=$PID
    start_server tubes --config "$OUT/auth12.toml"
    measure authcost --out "$RESULTS" --creds "$OUT/auth12.json" \
        --plain-port "$PLAIN12_PORT" --plain-pid "$PLAIN12_PID" --auth-port "$PORT" --auth-pid "$PID" \
        --count "$BENCH_AUTH_N" --max-time 120
    stop_server "$PID"
    stop_server "$PLAIN12_PID"
fi

cleanup
log "done in $((SECONDS - T0)) s of measuring; raw results in $RESULTS"
echo
"${PY[@]}" report --out "$RESULTS" --meta "$OUT/meta.json" --only "${BENCH_ONLY// /}" | tee "$OUT/table.txt"
