-- wrk script for bench/api_bench.py: the switchd API's keyed read and create.
--
-- Configured from the environment (wrk passes no options to scripts):
--   BENCH_MODE      "get" (GET /v1/customers/{id}) or "create" (POST /v1/customers)
--   BENCH_KEY       the API key, sent as "Authorization: Bearer <key>"
--   BENCH_IDS       "first:last", the seeded customer ids a read picks from at random
--   BENCH_TAG       a word making created names unique across runs
--   BENCH_DELAY_MS  optional: mean think time per connection before each request
--                   (uniform 0..2x, so the requests of many connections interleave);
--                   absent or 0 for a closed loop as fast as the server answers
--
-- done() prints one line "BENCH_RESULT {json}" with requests/s and latency
-- percentiles in microseconds, read by api_bench.py.

local mode = os.getenv("BENCH_MODE") or "get"
local key = os.getenv("BENCH_KEY") or ""
local tag = os.getenv("BENCH_TAG") or "bench"
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0
local first, last = string.match(os.getenv("BENCH_IDS") or "1:1", "^(%d+):(%d+)$")
first, last = tonumber(first), tonumber(last)

local threads = {}
local counter = 0

function setup(thread)
   -- runs in the main Lua state, once per wrk thread
   counter = counter + 1
   thread:set("thread_id", counter)
   table.insert(threads, thread)
end

function init(args)
   -- runs in each thread's own Lua state
   math.randomseed(os.time() * 1000 + thread_id)
   sequence = 0
   statuses = {}
   wrk.headers["Authorization"] = "Bearer " .. key
   if mode == "create" then
      wrk.method = "POST"
      wrk.headers["Content-Type"] = "application/json"
   else
      wrk.method = "GET"
   end
end

function request()
   if mode == "create" then
      sequence = sequence + 1
      local body = string.format(
         '{"name": "bench %s t%d #%d", "email": "bench-%s-%d-%d@example.net", "company": "Benchmark Ltd"}',
         tag, thread_id, sequence, tag, thread_id, sequence)
      return wrk.format(nil, "/v1/customers", nil, body)
   end
   return wrk.format(nil, "/v1/customers/" .. math.random(first, last))
end

if delay_ms > 0 then
   function delay()
      return math.random() * 2 * delay_ms
   end
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local seconds = summary.duration / 1e6
   local codes = {}
   for _, thread in ipairs(threads) do
      local counts = thread:get("statuses")
      for status, n in pairs(counts or {}) do
         codes[status] = (codes[status] or 0) + n
      end
   end
   local parts = {}
   for status, n in pairs(codes) do
      table.insert(parts, string.format('"%d": %d', status, n))
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "seconds": %.3f, "rps": %.1f, ' ..
      '"latency_us": {"mean": %.0f, "stdev": %.0f, "max": %d, ' ..
      '"p50": %d, "p90": %d, "p99": %d, "p99.9": %d}, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"statuses": {%s}}\n',
      summary.requests, seconds, summary.requests / seconds,
      latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      e.connect, e.read, e.write, e.status, e.timeout,
      table.concat(parts, ", ")))
end
