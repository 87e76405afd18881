-- wrk script of bench/kv-vs-etcd.sh: one put or get per request over a keyspace `k0`..`k<KEYS-1>`,
-- against etcd's HTTP JSON gateway or Shoal's `/v1/kv`. Configured by environment variables
-- (wrk passes none of its own to a script):
--
--   KV_TARGET      etcd | shoal
--   KV_OP          put | get        random key per request (seeded per thread: KV_SEED, thread id)
--                  preload          every key once, in order, split over the threads; each thread
--                                   writes KV_DONE_DIR/<id> once its share is answered, and the
--                                   caller then stops wrk (SIGINT)
--   KV_KEYS        keyspace size (100000)
--   KV_VALUE_SIZE  value length in bytes (100; ASCII, the same bytes for every key and target)
--   KV_SEED        base seed (1)
--   KV_THREADS     wrk's -t (to split the preload)
--   KV_CONNS       wrk's -c (margin of the preload's completion count)
--   KV_ETCD_SERIALIZABLE  1 = etcd ranges with "serializable":true (local read, no ReadIndex
--                  round through raft); default: etcd's default, linearizable
--   KV_NAMESPACE   Shoal namespace (bench)
--   SHOAL_TOKEN    Shoal bearer token
--
-- Every response is checked: a status outside 2xx, or an etcd range that found no key (etcd answers
-- 200 with no `kvs`), counts as bad. done() prints one line for the caller to parse:
--   KVBENCH target=.. op=.. requests=N seconds=S rps=R p50_ms=.. p99_ms=.. bad=N sock=N
-- (sock = wrk's connect/read/write/timeout errors; latency percentiles cover completed requests).

local target = os.getenv("KV_TARGET") or "etcd"
local op = os.getenv("KV_OP") or "get"
local keys = tonumber(os.getenv("KV_KEYS") or "100000")
local vsize = tonumber(os.getenv("KV_VALUE_SIZE") or "100")
local seed = tonumber(os.getenv("KV_SEED") or "1")
local nthreads = tonumber(os.getenv("KV_THREADS") or "1")
local nconns = tonumber(os.getenv("KV_CONNS") or "64")
local ns = os.getenv("KV_NAMESPACE") or "bench"
local token = os.getenv("SHOAL_TOKEN") or ""
local donedir = os.getenv("KV_DONE_DIR")
local range_tail = os.getenv("KV_ETCD_SERIALIZABLE") == "1" and '","serializable":true}' or '"}'

assert(target == "etcd" or target == "shoal", "KV_TARGET must be etcd or shoal")
assert(op == "put" or op == "get" or op == "preload", "KV_OP must be put, get or preload")

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = b64chars:sub(c1 + 1, c1 + 1) .. b64chars:sub(c2 + 1, c2 + 1)
      .. (b and b64chars:sub(c3 + 1, c3 + 1) or "=") .. (c and b64chars:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

-- The value: vsize printable bytes from a fixed generator (independent of the thread).
local function make_value()
  local alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
  local x, out = 12345, {}
  for i = 1, vsize do
    x = (x * 1103515245 + 12345) % 2147483648
    local j = math.floor(x / 65536) % #alphabet
    out[i] = alphabet:sub(j + 1, j + 1)
  end
  return table.concat(out)
end

-- ---- main state: number the threads, gather their counters in done() ----

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local bad, firstbad = 0, nil
  for _, t in ipairs(threads) do
    bad = bad + (t:get("nbad") or 0)
    firstbad = firstbad or t:get("firstbad")
  end
  local e = summary.errors
  local sock = e.connect + e.read + e.write + e.timeout
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "KVBENCH target=%s op=%s requests=%d seconds=%.2f rps=%.0f p50_ms=%.3f p99_ms=%.3f bad=%d sock=%d\n",
    target, op, summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, bad, sock))
  if firstbad then
    io.write("KVBENCH first bad response: " .. firstbad .. "\n")
  end
end

-- ---- thread states ----

local value, value_b64, keycache
local share, issued, answered, done_written = 0, 0, 0, false

function init(args)
  tid = tid or 0
  nbad = 0
  value = make_value()
  value_b64 = b64(value)
  keycache = {}
  math.randomseed(seed * 1000 + tid)
  if op == "preload" then
    -- keys tid, tid + T, tid + 2T, ... below `keys`
    share = math.floor((keys - 1 - tid) / nthreads) + 1
    if tid >= keys then share = 0 end
  end
  if target == "etcd" then
    wrk.headers["Content-Type"] = "application/json"
  else
    wrk.headers["Authorization"] = "Bearer " .. token
    if op ~= "get" then
      wrk.headers["Content-Type"] = "application/octet-stream"
    end
  end
end

local function key_b64(n)
  local k = keycache[n]
  if not k then
    k = b64("k" .. n)
    keycache[n] = k
  end
  return k
end

local function next_key()
  if op == "preload" then
    -- in order over this thread's share, then again (idempotent rewrites) until stopped; the
    -- second pass also writes thread 0's first key, whose request wrk spends checking the script
    local n = tid + (issued % math.max(share, 1)) * nthreads
    issued = issued + 1
    return n
  end
  return math.random(0, keys - 1)
end

function request()
  local n = next_key()
  if target == "etcd" then
    if op == "get" then
      return wrk.format("POST", "/v3/kv/range", nil, '{"key":"' .. key_b64(n) .. range_tail)
    end
    return wrk.format("POST", "/v3/kv/put", nil, '{"key":"' .. key_b64(n) .. '","value":"' .. value_b64 .. '"}')
  end
  local path = "/v1/kv/" .. ns .. "/k" .. n
  if op == "get" then
    return wrk.format("GET", path)
  end
  return wrk.format("PUT", path, nil, value)
end

function response(status, headers, body)
  local ok = status >= 200 and status < 300
  if ok and target == "etcd" and op == "get" and not (body and body:find('"kvs"', 1, true)) then
    ok = false -- etcd answers a range that found nothing with 200 and no kvs
  end
  if not ok then
    nbad = nbad + 1
    if not firstbad then
      firstbad = status .. " " .. string.sub(body or "", 1, 200)
    end
  end
  answered = answered + 1
  -- Each connection has one request in flight, so once a share's worth plus a few rounds of
  -- every connection have been answered, the share's first pass is in.
  if op == "preload" and donedir and not done_written and answered >= share + 4 * nconns then
    done_written = true
    local f = io.open(donedir .. "/" .. tid, "w")
    if f then
      f:write(answered .. "\n")
      f:close()
    end
  end
end
