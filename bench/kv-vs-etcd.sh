#!/usr/bin/env bash
# Load benchmark: Shoal's key-value HTTP API against etcd, in one run, with the same load tool (wrk),
# the same concurrency, the same keys and the same values.
#
#   cargo build --release --bin shoal && bench/kv-vs-etcd.sh
#   DURATION=30s CONNS=128 bench/kv-vs-etcd.sh
#   SHOAL=/path/to/shoal bench/kv-vs-etcd.sh
#
# What runs, one target at a time on the same machine (wrk shares its cores with the target):
#   etcd        single member (Debian's etcd-server), data dir in a temp dir, default durability:
#               the WAL is fsynced on every commit. Through its HTTP JSON gateway:
#               put = POST /v3/kv/put {"key":b64,"value":b64}, get = POST /v3/kv/range {"key":b64}.
#   shoal-wal   `shoal dev --no-gateway` (default durability: WAL written, not fsynced; survives
#               a crash of the process, not of the machine): put = PUT /v1/kv/bench/<key> (raw
#               body), get = GET /v1/kv/bench/<key>, admin bearer token.
#   shoal-sync  the same with `--sync`: the WAL fsynced on every write, as etcd.
# For each target: a fresh data dir, every key of the keyspace written once (preload, not
# measured), then a put run (random keys over the keyspace, overwriting), a short get warm-up and
# a get run (random keys, all present). Keys k0..k<KEYS-1>, values VALUE_SIZE ASCII bytes, keys
# drawn by a fixed seed per wrk thread (bench/kv/kv.lua), so runs draw the same key sequence.
# Every response is checked (non-2xx, and an etcd range that found nothing, are errors, as are
# wrk's socket errors); the script exits 1 when any measured run had one.
#
# Settings (environment): DURATION=10s THREADS=2 CONNS=64 KEYS=100000 VALUE_SIZE=100 SEED=1
# WARMUP=2s (get warm-up; 0 = none) TARGETS="etcd shoal-wal shoal-sync" ETCD_SERIALIZABLE=0 (1 =
# etcd gets with "serializable":true, a local read without etcd's default linearizable ReadIndex
# round through raft; a single Shoal node reads locally). SHOAL = the binary, default
# ${CARGO_TARGET_DIR:-target}/release/shoal; without one, the Shoal rows are skipped.
# Installs etcd-server, wrk and curl with apt-get when they are missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
SEED=${SEED:-1}
WARMUP=${WARMUP:-2s}
ETCD_SERIALIZABLE=${ETCD_SERIALIZABLE:-0}
TARGETS=${TARGETS:-etcd shoal-wal shoal-sync}
LUA=$PWD/bench/kv/kv.lua

if [ -n "${SHOAL:-}" ]; then
    :
elif [ -x "${CARGO_TARGET_DIR:-target}/release/shoal" ]; then
    SHOAL=${CARGO_TARGET_DIR:-target}/release/shoal
elif [ -x "$HOME/.cache/shoal/target/release/shoal" ]; then # .ci/run's target dir
    SHOAL=$HOME/.cache/shoal/target/release/shoal
else
    SHOAL=${CARGO_TARGET_DIR:-target}/release/shoal
fi

# ---- tools ----
need=()
case " $TARGETS " in *" etcd "*) command -v etcd > /dev/null || need+=(etcd-server) ;; esac
command -v wrk > /dev/null || need+=(wrk)
command -v curl > /dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    [ "$(id -u)" = 0 ] || { echo "needs root to apt-get install ${need[*]}" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null
fi

# ---- processes and ports ----
work=$(mktemp -d "${TMPDIR:-/tmp}/kv-vs-etcd.XXXXXX") # the data dirs: TMPDIR must be on a real disk
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

used_ports=" "
free_port() { # a loopback TCP port nobody listens on (and not handed out before in this run)
    local p
    while :; do
        if command -v python3 > /dev/null; then
            p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        else
            p=$((20000 + RANDOM % 40000))
            if (exec 3<> "/dev/tcp/127.0.0.1/$p") 2> /dev/null; then continue; fi
        fi
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

stop() { # pid: end one process this script started
    kill "$1" 2> /dev/null || true
    wait "$1" 2> /dev/null || true
    forget "$1"
}

wait_http() { # url pid log: until the url answers 2xx, or the process died, or 120 s
    local i
    for i in $(seq 1 1200); do
        curl -fsS -o /dev/null "$1" 2> /dev/null && return 0
        kill -0 "$2" 2> /dev/null || { echo "process $2 died; its log:" >&2; tail -20 "$3" >&2; exit 1; }
        sleep 0.1
    done
    echo "$1 did not answer in 120 s; log:" >&2
    tail -20 "$3" >&2
    exit 1
}

b64() { printf '%s' "$1" | base64 -w0; }

# ---- wrk ----
# wrk_kv target op url [duration]: prints wrk's output to $work/last.out, the KVBENCH line to stdout
wrk_kv() {
    KV_TARGET=$1 KV_OP=$2 KV_KEYS=$KEYS KV_VALUE_SIZE=$VALUE_SIZE KV_SEED=$SEED KV_THREADS=$THREADS \
        KV_CONNS=$CONNS KV_ETCD_SERIALIZABLE=$ETCD_SERIALIZABLE SHOAL_TOKEN=${SHOAL_TOKEN:-} \
        wrk -t"$THREADS" -c"$CONNS" -d"${4:-$DURATION}" --latency -s "$LUA" "$3" > "$work/last.out"
    grep '^KVBENCH target' "$work/last.out" || { cat "$work/last.out" >&2; echo "wrk printed no KVBENCH line" >&2; exit 1; }
}

# preload target url: every key once (wrk stopped by SIGINT once each thread's share is answered)
preload() {
    local done_dir=$work/preload.$1.$RANDOM t0 t1
    mkdir -p "$done_dir"
    t0=$(date +%s.%N)
    KV_TARGET=$1 KV_OP=preload KV_KEYS=$KEYS KV_VALUE_SIZE=$VALUE_SIZE KV_SEED=$SEED KV_THREADS=$THREADS \
        KV_CONNS=$CONNS KV_DONE_DIR=$done_dir SHOAL_TOKEN=${SHOAL_TOKEN:-} \
        wrk -t"$THREADS" -c"$CONNS" -d600s -s "$LUA" "$2" > "$work/preload.out" &
    local wpid=$!
    pids+=("$wpid")
    while kill -0 "$wpid" 2> /dev/null; do
        [ "$(find "$done_dir" -type f | wc -l)" -ge "$THREADS" ] && break
        sleep 0.2
    done
    kill -INT "$wpid" 2> /dev/null || true
    wait "$wpid" 2> /dev/null || true
    forget "$wpid"
    t1=$(date +%s.%N)
    local line bad sock
    line=$(grep '^KVBENCH target' "$work/preload.out") || { cat "$work/preload.out" >&2; exit 1; }
    bad=$(field bad "$line")
    sock=$(field sock "$line")
    awk -v a="$t0" -v b="$t1" -v k="$KEYS" -v r="$(field requests "$line")" -v e=$((bad + sock)) \
        'BEGIN { printf "  preload: %d keys, %d requests in %.1f s, %d errors\n", k, r, b - a, e }'
    if [ $((bad + sock)) -ne 0 ]; then
        grep '^KVBENCH first' "$work/preload.out" >&2 || true
        echo "preload of $1 had errors" >&2
        exit 1
    fi
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<< "$2"; }

declare -A RPS P50 P99 ERR
rows=()
failed=0

measure() { # name target op url
    local line
    line=$(wrk_kv "$2" "$3" "$4")
    RPS[$1:$3]=$(field rps "$line")
    P50[$1:$3]=$(field p50_ms "$line")
    P99[$1:$3]=$(field p99_ms "$line")
    ERR[$1:$3]=$(($(field bad "$line") + $(field sock "$line")))
    rows+=("$1:$3")
    printf '  %-4s %9s req/s   p50 %8s ms   p99 %8s ms   errors %s\n' \
        "$3" "${RPS[$1:$3]}" "${P50[$1:$3]}" "${P99[$1:$3]}" "${ERR[$1:$3]}"
    if [ "${ERR[$1:$3]}" -ne 0 ]; then
        failed=1
        grep '^KVBENCH first' "$work/last.out" || true
    fi
}

echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency; keys k0..k$((KEYS - 1)) random (seed $SEED), values $VALUE_SIZE B"
echo "machine: $(nproc) cores, $(uname -sr); $(etcd --version 2> /dev/null | head -1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
fstype=$(df --output=fstype "$work" | tail -1)
echo "data dirs in $work ($fstype)"
case $fstype in tmpfs | ramfs) echo "WARNING: $fstype: fsync may cost nothing here; set TMPDIR to a directory on a disk" >&2 ;; esac

# ---- etcd ----
bench_etcd() {
    local cport pport url pid
    cport=$(free_port)
    pport=$(free_port)
    url=http://127.0.0.1:$cport
    etcd --name bench --data-dir "$work/etcd" --logger zap --log-level warn \
        --listen-client-urls "$url" --advertise-client-urls "$url" \
        --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "bench=http://127.0.0.1:$pport" --initial-cluster-state new \
        > "$work/etcd.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_http "$url/health" "$pid" "$work/etcd.log"
    echo "etcd (fsync per commit; gets $([ "$ETCD_SERIALIZABLE" = 1 ] && echo serializable || echo linearizable)), $url"
    # the gateway's answer to a put, and a range that counts the preloaded keys
    curl -fsS -X POST "$url/v3/kv/put" -d "{\"key\":\"$(b64 probe)\",\"value\":\"$(b64 x)\"}" > /dev/null
    preload etcd "$url"
    local count
    count=$(curl -fsS -X POST "$url/v3/kv/range" \
        -d "{\"key\":\"$(b64 k)\",\"range_end\":\"$(b64 l)\",\"count_only\":true}" | sed -n 's/.*"count": *"\([0-9]*\)".*/\1/p')
    [ "$count" = "$KEYS" ] || { echo "etcd holds ${count:-?} keys k*, not $KEYS" >&2; exit 1; }
    measure etcd etcd put "$url"
    if [ "$WARMUP" != 0 ]; then wrk_kv etcd get "$url" "$WARMUP" > /dev/null; fi
    measure etcd etcd get "$url"
    stop "$pid"
}

# ---- Shoal ----
bench_shoal() { # name [--sync]
    local name=$1
    shift
    local port url pid dir=$work/$name
    port=$(free_port)
    url=http://127.0.0.1:$port
    RUST_LOG=warn "$SHOAL" dev --data-dir "$dir" --listen "127.0.0.1:$port" --no-gateway "$@" \
        > "$work/$name.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_http "$url/healthz" "$pid" "$work/$name.log"
    for _ in $(seq 1 100); do [ -s "$dir/admin.token" ] && break; sleep 0.1; done
    SHOAL_TOKEN=$(cat "$dir/admin.token")
    export SHOAL_TOKEN
    echo "$name (shoal dev --no-gateway $*), $url"
    # one authenticated round trip before loading it
    curl -fsS -X PUT -H "Authorization: Bearer $SHOAL_TOKEN" -H 'Content-Type: application/octet-stream' --data-binary x "$url/v1/kv/bench/probe" > /dev/null
    [ "$(curl -fsS -H "Authorization: Bearer $SHOAL_TOKEN" "$url/v1/kv/bench/probe")" = x ] \
        || { echo "$name: GET of a put key gave something else" >&2; exit 1; }
    preload shoal "$url"
    # count the preloaded keys by listing them (pages of 1000)
    local count=0 cursor="" page n
    while :; do
        page=$(curl -fsS -G -H "Authorization: Bearer $SHOAL_TOKEN" "$url/v1/kv/bench" \
            --data-urlencode prefix=k --data-urlencode limit=1000 --data-urlencode "cursor=$cursor")
        n=$({ grep -o '"key":' <<< "$page" || true; } | wc -l)
        count=$((count + n))
        cursor=$(sed -n 's/.*"cursor": *"\([^"]*\)".*/\1/p' <<< "$page")
        [ -n "$cursor" ] && [ "$n" -gt 0 ] || break
    done
    [ "$count" = "$KEYS" ] || { echo "$name holds $count keys k*, not $KEYS" >&2; exit 1; }
    measure "$name" shoal put "$url"
    if [ "$WARMUP" != 0 ]; then wrk_kv shoal get "$url" "$WARMUP" > /dev/null; fi
    measure "$name" shoal get "$url"
    stop "$pid"
    unset SHOAL_TOKEN
}

for t in $TARGETS; do
    case $t in
        etcd) bench_etcd ;;
        shoal-wal | shoal-sync)
            if [ ! -x "$SHOAL" ]; then
                echo "SKIPPED $t: no Shoal binary at $SHOAL (cargo build --release --bin shoal, or SHOAL=/path/to/shoal)"
            elif [ "$t" = shoal-wal ]; then
                bench_shoal shoal-wal
            else
                bench_shoal shoal-sync --sync
            fi
            ;;
        *) echo "unknown target $t (TARGETS: etcd shoal-wal shoal-sync)" >&2; exit 1 ;;
    esac
done

# ---- summary ----
echo
printf '%-11s %-4s %10s %10s %10s %7s\n' target op req/s p50_ms p99_ms errors
for r in "${rows[@]}"; do
    printf '%-11s %-4s %10s %10s %10s %7s\n' "${r%%:*}" "${r##*:}" "${RPS[$r]}" "${P50[$r]}" "${P99[$r]}" "${ERR[$r]}"
done
ratio() { # shoal-name op
    [ -n "${RPS[$1:$2]:-}" ] && [ -n "${RPS[etcd:$2]:-}" ] || return 0
    awk -v s="${RPS[$1:$2]}" -v e="${RPS[etcd:$2]}" -v sp="${P99[$1:$2]}" -v ep="${P99[etcd:$2]}" -v n="$1" -v o="$2" \
        'BEGIN { printf "  %-11s %-4s req/s %6.2fx   p99 %6.2fx\n", n, o, s / e, sp / ep }'
}
if [ -n "${RPS[etcd:put]:-}" ] && [ ${#rows[@]} -gt 2 ]; then
    echo
    echo "ratios Shoal / etcd (req/s: higher is better for Shoal; p99: lower is better)"
    ratio shoal-wal put
    ratio shoal-sync put
    ratio shoal-wal get
    ratio shoal-sync get
fi
if [ "$failed" -ne 0 ]; then
    echo "ERRORS in a measured run: these numbers are not valid" >&2
    exit 1
fi
