#!/usr/bin/env bash
# Load benchmark: an online scale-out of Shoal's state store under write load.
#
#   cargo build --release --bin shoal && bench/store-scale-out.sh
#   KEYS=200000 SHARDS=4 bench/store-scale-out.sh
#
# `shoal dev --no-gateway --shards $SHARDS` (release) is loaded with KEYS keys (k0.., VALUE_SIZE
# bytes; bench/kv/kv.lua's preload), then:
#   1. baseline: wrk puts random keys for BASELINE (p50/p99 with nothing moving);
#   2. during: wrk puts random keys for DURING while, MOVE_AFTER seconds in, `POST
#      /v1/store/scale-out` grows the store N -> N+1 in the same process; the script polls
#      /v1/store until the move ends and prints its duration, keys copied, and how long the moving
#      keys were frozen (the final catch-up and the switch of the map);
#   3. after: every key is still there (the listing counts KEYS) and the keys copied are within a
#      few percent of KEYS/(N+1).
# Errors (non-2xx) are counted by kv.lua; any error fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-1000000}
SHARDS=${SHARDS:-10}
VALUE_SIZE=${VALUE_SIZE:-100}
THREADS=${THREADS:-2}
CONNS=${CONNS:-16}
BASELINE=${BASELINE:-10s}
DURING=${DURING:-40s}
MOVE_AFTER=${MOVE_AFTER:-5}
LUA=$PWD/bench/kv/kv.lua
SHOAL=${SHOAL:-${CARGO_TARGET_DIR:-$HOME/.cache/shoal/target}/release/shoal}
[ -x "$SHOAL" ] || { echo "no Shoal binary at $SHOAL (cargo build --release --bin shoal, or SHOAL=...)" >&2; exit 1; }
command -v wrk > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk > /dev/null; }

work=$(mktemp -d "${TMPDIR:-/tmp}/store-scale-out.XXXXXX")
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
RUST_LOG=warn "$SHOAL" dev --data-dir "$work/data" --listen "127.0.0.1:$port" --no-gateway --shards "$SHARDS" \
    > "$work/shoal.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 1200); do curl -fsS -o /dev/null "$url/healthz" 2> /dev/null && break; sleep 0.1; done
SHOAL_TOKEN=$(cat "$work/data/admin.token")
export SHOAL_TOKEN
auth=(-H "Authorization: Bearer $SHOAL_TOKEN")

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<< "$2"; }
wrk_kv() { # op duration conns -> KVBENCH line
    KV_TARGET=shoal KV_OP=$1 KV_KEYS=$KEYS KV_VALUE_SIZE=$VALUE_SIZE KV_SEED=1 KV_THREADS=$THREADS KV_CONNS=$3 \
        wrk -t"$THREADS" -c"$3" -d"$2" --latency -s "$LUA" "$url" > "$work/wrk.$1.out"
    grep '^KVBENCH target' "$work/wrk.$1.out"
}

echo "shoal dev --shards $SHARDS, $KEYS keys of $VALUE_SIZE B; wrk -t$THREADS -c$CONNS"
t0=$(date +%s.%N)
mkdir -p "$work/done"
KV_TARGET=shoal KV_OP=preload KV_KEYS=$KEYS KV_VALUE_SIZE=$VALUE_SIZE KV_SEED=1 KV_THREADS=$THREADS KV_CONNS=64 \
    KV_DONE_DIR=$work/done wrk -t"$THREADS" -c64 -d1200s -s "$LUA" "$url" > "$work/preload.out" &
wpid=$!
while kill -0 "$wpid" 2> /dev/null; do
    [ "$(find "$work/done" -type f | wc -l)" -ge "$THREADS" ] && break
    sleep 0.5
done
kill -INT "$wpid" 2> /dev/null || true
wait "$wpid" 2> /dev/null || true
line=$(grep '^KVBENCH target' "$work/preload.out")
echo "preload: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'), errors $(($(field bad "$line") + $(field sock "$line")))"

base=$(wrk_kv put "$BASELINE" "$CONNS")
echo "baseline puts:      $(field rps "$base") req/s, p50 $(field p50_ms "$base") ms, p99 $(field p99_ms "$base") ms, errors $(($(field bad "$base") + $(field sock "$base")))"

wrk_kv put "$DURING" "$CONNS" > "$work/during.line" &
during_pid=$!
sleep "$MOVE_AFTER"
started=$(curl -fsS -X POST "${auth[@]}" "$url/v1/store/scale-out")
id=$(sed -n 's/.*"id": *\([0-9]*\).*/\1/p' <<< "$started")
while :; do
    status=$(curl -fsS "${auth[@]}" "$url/v1/store")
    python3 -c 'import json,sys; m=json.load(sys.stdin).get("last_move") or {}; sys.exit(0 if m.get("id")=='"$id"' else 1)' <<< "$status" && break
    sleep 0.2
done
wait "$during_pid"
during=$(cat "$work/during.line")
printf '%s' "$status" > "$work/status.json"
python3 - "$KEYS" "$SHARDS" "$work/status.json" << 'PY'
import json, sys
keys, shards = int(sys.argv[1]), int(sys.argv[2])
m = json.load(open(sys.argv[3]))["last_move"]
took = (m["finished_at_ms"] - m["started_at_ms"]) / 1000
expected = keys / (shards + 1)
print(f"move {m['from_shards']} -> {m['to_shards']}: {m['phase']}, {took:.2f} s, {m['keys_copied']} keys copied "
      f"({m['keys_copied'] / expected:.3f} x keys/(N+1) = {expected:.0f}), frozen {m['freeze_ms']} ms")
if m["phase"] != "finished":
    sys.exit(f"the move failed: {m.get('error')}")
PY
echo "puts during the move: $(field rps "$during") req/s, p50 $(field p50_ms "$during") ms, p99 $(field p99_ms "$during") ms, errors $(($(field bad "$during") + $(field sock "$during")))"

count=0
cursor=""
while :; do
    page=$(curl -fsS -G "${auth[@]}" "$url/v1/kv/bench" --data-urlencode prefix=k --data-urlencode limit=1000 --data-urlencode "cursor=$cursor")
    n=$({ grep -o '"key":' <<< "$page" || true; } | wc -l)
    count=$((count + n))
    cursor=$(sed -n 's/.*"cursor": *"\([^"]*\)".*/\1/p' <<< "$page")
    [ -n "$cursor" ] && [ "$n" -gt 0 ] || break
done
echo "after: $count keys listed (expected $KEYS)"
[ "$count" = "$KEYS" ] || { echo "keys lost or duplicated" >&2; exit 1; }
errors=$(($(field bad "$during") + $(field sock "$during") + $(field bad "$base") + $(field sock "$base")))
[ "$errors" = 0 ] || { echo "ERRORS during the measured runs" >&2; exit 1; }
