#!/usr/bin/env bash
# Load benchmark of issue 4: Shoal's gateway against nginx as a reverse proxy in front of the same
# three upstreams, with the same load tool (wrk) in the same run.
#
#   cargo build --release --bin shoal --example bare-proxy
#   bench/gateway-vs-nginx.sh                 # 5 rounds of 10 s per target, 64 connections, 2 wrk threads
#   ROUNDS=3 DURATION=30s CONNECTIONS=128 bench/gateway-vs-nginx.sh
#
# The targets take turns within each round, so a slow spell of a shared machine hits all of them;
# the summary gives each target's median and the median of the per-round gateway/nginx ratios.
#
# Needs nginx and wrk (apt-get install -y nginx wrk). Upstreams: one nginx with one worker serving
# three ports (a 12-byte body). Proxies: nginx with 2 workers and keep-alive upstream connections;
# `shoal dev`'s gateway (release build, Tokio's default 2 workers on 2 cores) with a route whose
# router plugin is the Wasm round-robin. Neither proxy writes an access log (RUST_LOG=warn).
# When built, the `bare-proxy` example runs too: hyper with the gateway's threading model and
# nothing of Shoal's per-request work, the floor a hyper-based gateway can reach.
set -euo pipefail
cd "$(dirname "$0")/.."

SHOAL=${SHOAL:-${CARGO_TARGET_DIR:-target}/release/shoal}
BARE=${BARE:-$(dirname "$SHOAL")/examples/bare-proxy}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ROUTER=${ROUTER:-round-robin}
GATEWAY_WORKERS=${GATEWAY_WORKERS:-0} # shoal dev --gateway-workers (0 = one per core)
[ -x "$SHOAL" ] || { echo "no $SHOAL: cargo build --release --bin shoal" >&2; exit 1; }
command -v nginx >/dev/null && command -v wrk >/dev/null || { echo "needs nginx and wrk" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/up" "$work/proxy"
cat > "$work/up/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/up/nginx.pid;
error_log $work/up/error.log;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:18081; location / { return 200 "upstream-1\n"; } }
    server { listen 127.0.0.1:18082; location / { return 200 "upstream-2\n"; } }
    server { listen 127.0.0.1:18083; location / { return 200 "upstream-3\n"; } }
}
CONF
cat > "$work/proxy/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $work/proxy/nginx.pid;
error_log $work/proxy/error.log;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream app {
        server 127.0.0.1:18081;
        server 127.0.0.1:18082;
        server 127.0.0.1:18083;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:18080;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
CONF
nginx -p "$work/up" -c "$work/up/nginx.conf" & pids+=($!)
nginx -p "$work/proxy" -c "$work/proxy/nginx.conf" & pids+=($!)
nginx_pid=$!

if [ -x "$BARE" ]; then
    "$BARE" 127.0.0.1:18095 127.0.0.1:18081 127.0.0.1:18082 127.0.0.1:18083 & pids+=($!)
    bare_pid=$!
fi
RUST_LOG=warn "$SHOAL" dev --listen 127.0.0.1:18070 --gateway 127.0.0.1:18090 --data-dir "$work/shoal" \
    --gateway-workers "$GATEWAY_WORKERS" \
    > "$work/shoal.out" 2> "$work/shoal.err" & pids+=($!)
shoal_pid=$!
for _ in $(seq 1 200); do grep -q "admin token" "$work/shoal.out" 2>/dev/null && break; sleep 0.1; done
export SHOAL_API=http://127.0.0.1:18070
export SHOAL_TOKEN=$(cat "$work/shoal/admin.token")
for i in 1 2 3; do
    "$SHOAL" service register app "u$i" --address "127.0.0.1:1808$i" > /dev/null
done
"$SHOAL" route put app --prefix / --service app --router "$ROUTER" > /dev/null
for port in 18080 18090 $([ -x "$BARE" ] && echo 18095); do
    for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:$port/" > /dev/null 2>&1 && break; sleep 0.1; done
done

# CPU time (user + system, in clock ticks) of processes and their children threads/processes.
cpu_ticks() { # pid...
    local total=0 p
    for p in "$@" $(for q in "$@"; do pgrep -P "$q"; done); do
        [ -r "/proc/$p/stat" ] || continue
        total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

run() { # name port pid-of-the-proxy (its CPU per request is measured; none for `direct`)
    wrk -t"$THREADS" -c"$CONNECTIONS" -d3s "http://127.0.0.1:$2/" > /dev/null # warm-up, at the measured concurrency
    local before after=0; before=$([ -n "${3:-}" ] && cpu_ticks "$3" || echo 0)
    local out; out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$2/")
    [ -n "${3:-}" ] && after=$(cpu_ticks "$3")
    local rps p50 p99 errors total cpu=""
    rps=$(awk '/Requests\/sec/ {print $2}' <<< "$out")
    total=$(awk '/requests in/ {print $1}' <<< "$out")
    p50=$(awk '$1 == "50%" {print $2}' <<< "$out")
    p99=$(awk '$1 == "99%" {print $2}' <<< "$out")
    errors=$(grep -E "Non-2xx|Socket errors" <<< "$out" || true)
    if [ -n "${3:-}" ] && [ "${total:-0}" -gt 0 ]; then
        cpu=$(awk -v t=$((after - before)) -v us="$TICK_US" -v n="$total" 'BEGIN { printf "%.1f us CPU/req", t * us / n }')
    fi
    printf '%-14s %10s req/s   p50 %-9s p99 %-9s %-18s %s\n' "$1" "$rps" "$p50" "$p99" "$cpu" "$errors"
    eval "RPS_$1=$rps"
    eval "ALL_$1+=($rps)"
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, 3 upstreams (nginx, 1 worker), router $ROUTER"
run direct 18081
ratios=() bare_ratios=()
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round"
    run nginx 18080 "$nginx_pid"
    run shoal 18090 "$shoal_pid"
    ratios+=("$(awk -v s="$RPS_shoal" -v n="$RPS_nginx" 'BEGIN { printf "%.3f", s / n }')")
    if [ -x "$BARE" ]; then
        run bare_hyper 18095 "$bare_pid"
        bare_ratios+=("$(awk -v s="$RPS_shoal" -v b="$RPS_bare_hyper" 'BEGIN { printf "%.3f", s / b }')")
    fi
done
echo "median req/s: nginx $(median "${ALL_nginx[@]}"), gateway $(median "${ALL_shoal[@]}")$([ -x "$BARE" ] && echo ", bare hyper $(median "${ALL_bare_hyper[@]}")")"
echo "gateway / nginx per round: ${ratios[*]}"
echo "gateway / nginx throughput, median of the rounds: $(median "${ratios[@]}")"
if [ -x "$BARE" ]; then
    echo "gateway / bare hyper, median of the rounds: $(median "${bare_ratios[@]}")"
fi
# Memory of the whole `shoal dev` process after the load (no one scraped /metrics meanwhile).
awk '/^(VmRSS|VmHWM)/ { printf "shoal dev %s %d MiB\n", $1, $2 / 1024 }' "/proc/$shoal_pid/status"
