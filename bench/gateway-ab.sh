#!/usr/bin/env bash
# A/B of two `shoal` builds' gateways on the same machine in one sitting: each runs `shoal dev`
# (RUST_LOG=warn, no OTLP endpoint) with one route to one nginx upstream (a 12-byte body) through
# the Wasm round-robin router; wrk (2 threads, 64 connections) loads them in turns, the order
# alternating per round, and each round prints req/s, p50 and the `shoal dev` process's CPU time
# per request (user + system, all its threads).
#
#   A=/tmp/shoal-before B=/tmp/shoal-after ROUNDS=6 DURATION=8s bench/gateway-ab.sh
#   A=$S B=$S B_ENV="OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318" bench/gateway-ab.sh
#
# A_ENV and B_ENV (space-separated VAR=value) set variables for one side only.
# Needs nginx and wrk (apt-get install -y nginx wrk). When both builds come from one target dir,
# check each binary for a string only one of them has (BENCHMARKS.md, issue 20's A/B).
set -euo pipefail
A=${A:?the first shoal binary}; B=${B:?the second shoal binary}
ROUNDS=${ROUNDS:-6}; DURATION=${DURATION:-8s}
work=$(mktemp -d); chmod 711 "$work"; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/up"
cat > "$work/up/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/up/nginx.pid;
error_log $work/up/error.log;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
    server { listen 127.0.0.1:18181; location / { return 200 "upstream-1\n"; } } }
CONF
nginx -p "$work/up" -c "$work/up/nginx.conf" & pids+=($!)
cpu() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
start() { # name bin api gw env
  env RUST_LOG=warn $5 "$2" dev --listen 127.0.0.1:$3 --gateway 127.0.0.1:$4 --data-dir "$work/$1" --sandbox-dir "$work/$1-sb" > "$work/$1.out" 2> "$work/$1.err" & pids+=($!); eval "PID_$1=$!"
  for _ in $(seq 1 300); do grep -q "admin token" "$work/$1.out" 2>/dev/null && break; sleep 0.1; done
  SHOAL_API=http://127.0.0.1:$3 SHOAL_TOKEN=$(cat "$work/$1/admin.token") "$2" service register app u1 --address 127.0.0.1:18181 > /dev/null
  SHOAL_API=http://127.0.0.1:$3 SHOAL_TOKEN=$(cat "$work/$1/admin.token") "$2" route put app --prefix / --service app --router round-robin > /dev/null
  for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:$4/" > /dev/null 2>&1 && break; sleep 0.1; done
}
start a "$A" 18170 18190 "${A_ENV:-}"
start b "$B" 18171 18191 "${B_ENV:-}"
run() { wrk -t2 -c64 -d3s "http://127.0.0.1:$2/" > /dev/null
  pid=$(eval echo "\$PID_$1"); before=$(cpu "$pid")
  out=$(wrk -t2 -c64 -d"$DURATION" --latency "http://127.0.0.1:$2/")
  after=$(cpu "$pid"); total=$(awk '/requests in/ {print $1}' <<< "$out")
  printf '%-6s %10s req/s p50 %s %s us CPU/req %s\n' "$1" "$(awk '/Requests\/sec/ {print $2}' <<< "$out")" "$(awk '$1 == "50%" {print $2}' <<< "$out")" "$(awk -v t=$((after - before)) -v us="$TICK_US" -v n="$total" 'BEGIN { printf "%.1f", t * us / n }')" "$(grep -E 'Non-2xx|Socket errors' <<< "$out" || true)"; }
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run a 18190; run b 18191; else run b 18191; run a 18190; fi
done
