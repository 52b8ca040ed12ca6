-- wrk script: POST /v1/payments with API.md's authorization body, closed loop.
--
--   wrk -t1 -c64 -d10s --latency -s benchmarks/wrk/authorize.lua URL -- SECRET_KEY
--
-- Every request carries a fresh Idempotency-Key (a random per-thread prefix read from
-- /dev/urandom, plus a per-thread counter), so each one is a new authorization, never a
-- replay. The merchant's secret key is the first script argument; without it no
-- Authorization header is sent (the framework baseline, see baseline.lua).
-- Non-2xx answers and replays are counted per thread (the `response` callback) and
-- printed by `done` as one line that benchmarks/closedloop.py parses:
--   kassa-wrk: answers=N non2xx=M replayed=R statuses=201:N,409:M

-- Globals on purpose: `thread:get` (in `done`) reads a thread's globals only.
counter = 0
prefix = nil
secret = nil
non2xx = 0
replayed = 0
answers = 0
statuses = {}
local threads = {}

-- A card that never expires during the run: the expiry year follows the clock.
local exp_year = tonumber(os.date("%Y")) + 4
local body = string.format(
  '{"amount":1999,"currency":"eur","capture":"manual",' ..
  '"payment_method":{"type":"card","card":{"number":"4242424242424242",' ..
  '"exp_month":12,"exp_year":%d,"cvc":"123","holder_name":"Ada Lovelace"}},' ..
  '"reference":"bench","metadata":{"cart":"c_77"}}', exp_year)

local function random_hex(bytes)
  local f = assert(io.open("/dev/urandom", "rb"))
  local raw = f:read(bytes)
  f:close()
  return (raw:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  secret = args[1]
  if secret == "" then secret = nil end
  prefix = "wrk-" .. random_hex(8)
end

function request()
  counter = counter + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. "-" .. counter,
  }
  if secret then headers["Authorization"] = "Bearer " .. secret end
  return wrk.format("POST", "/v1/payments", headers, body)
end

function response(status, headers, _)
  answers = answers + 1
  statuses[status] = (statuses[status] or 0) + 1
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  if headers["Idempotent-Replayed"] or headers["idempotent-replayed"] then
    replayed = replayed + 1
  end
end

-- `done` runs in the main thread: the counters live in each thread's own Lua state and
-- `thread:get` copies them (tables too) out of it.
function done(summary, latency, requests)
  local total_answers, total_non2xx, total_replayed = 0, 0, 0
  local merged = {}
  for _, thread in ipairs(threads) do
    total_answers = total_answers + thread:get("answers")
    total_non2xx = total_non2xx + thread:get("non2xx")
    total_replayed = total_replayed + thread:get("replayed")
    for code, count in pairs(thread:get("statuses")) do
      merged[code] = (merged[code] or 0) + count
    end
  end
  local parts = {}
  for code, count in pairs(merged) do table.insert(parts, code .. ":" .. count) end
  table.sort(parts)
  io.write(string.format("kassa-wrk: answers=%d non2xx=%d replayed=%d statuses=%s\n",
    total_answers, total_non2xx, total_replayed, table.concat(parts, ",")))
end
