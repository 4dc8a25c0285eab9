-- wrk script: POST a JSON body that is unique on every request.
--
-- Why: the gateway answers a repeated push as a duplicate without processing it, so a fixed body
-- would measure the dedupe path, not ingest. The body comes from a template file written by
-- bench/bodies.py; these placeholders are expanded exactly as bench.bodies.expand does:
--   @@N@@   the request number (unique: base + thread * 1e8 + counter)
--   @@TS@@  ISO time TS_EPOCH + N seconds
--   @@DAY@@ the day DAY_EPOCH + (N mod 730) days
--
-- Usage: wrk -t1 -c32 -d10s -s unique_body.lua URL -- TEMPLATE TOKEN BASE
-- At the end it prints one JSON line (requests, duration, errors, latency) for bench/load.py.

local TS_EPOCH = 1767225600
local DAY_EPOCH = 1798761600
local DAY_CYCLE = 730

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local parts = {}
local counter = 0
local first = 0

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local text = file:read("*a")
  file:close()
  -- Split once: odd entries are literal text, even entries placeholder names.
  local pos = 1
  while true do
    local s, e, name = string.find(text, "@@(%u+)@@", pos)
    if not s then
      table.insert(parts, string.sub(text, pos))
      break
    end
    table.insert(parts, string.sub(text, pos, s - 1))
    table.insert(parts, name)
    pos = e + 1
  end
  first = tonumber(args[3] or "0") + tid * 100000000
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Gateway-Token"] = args[2]
end

local function value(name, n)
  if name == "N" then
    return string.format("%d", n)
  elseif name == "TS" then
    return os.date("!%Y-%m-%dT%H:%M:%SZ", TS_EPOCH + n)
  elseif name == "DAY" then
    return os.date("!%Y-%m-%d", DAY_EPOCH + (n % DAY_CYCLE) * 86400)
  end
  return ""
end

function request()
  counter = counter + 1
  local n = first + counter
  local out = {}
  for i, part in ipairs(parts) do
    if i % 2 == 1 then
      out[i] = part
    else
      out[i] = value(part, n)
    end
  end
  return wrk.format(nil, nil, nil, table.concat(out))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_s": %.6f, "bytes": %d, "http_errors": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
      .. '"latency_ms": {"p50": %.3f, "p99": %.3f, "max": %.3f}}\n',
    summary.requests, summary.duration / 1e6, summary.bytes, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
