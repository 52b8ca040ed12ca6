-- What authorize.lua and stripe.lua share (loaded by them with dofile): the fresh
-- Idempotency-Key per request, and the counting of answers that `done` prints as the one
-- line benchmarks/closedloop.py parses:
--   kassa-wrk: answers=N non2xx=M replayed=R statuses=201:N,409:M
-- A script sets `key_prefix_name` before `init` runs, and builds its request with
-- `next_key()`.

-- Globals on purpose: `thread:get` (in `done`) reads a thread's globals only.
counter = 0
prefix = nil
secret = nil
non2xx = 0
replayed = 0
answers = 0
statuses = {}
local threads = {}

local function random_hex(bytes)
  local f = assert(io.open("/dev/urandom", "rb"))
  local raw = f:read(bytes)
  f:close()
  return (raw:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function setup(thread)
  table.insert(threads, thread)
end

-- The merchant's secret key is the first script argument ("" or none: no key); each
-- thread's keys start with a random prefix of its own, so no request is ever a replay.
function init(args)
  secret = args[1]
  if secret == "" then secret = nil end
  prefix = key_prefix_name .. "-" .. random_hex(8)
end

function next_key()
  counter = counter + 1
  return prefix .. "-" .. counter
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
