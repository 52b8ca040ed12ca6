-- wrk script: what stripe-python 16.1.0 sends for
--   client.v1.payment_intents.create({"amount": 1999, "currency": "eur", "confirm": True,
--       "capture_method": "manual", "payment_method": "pm_card_visa",
--       "metadata": {"cart": "c_77"}})
-- against Kassa's Stripe-compatible tree, closed loop:
--
--   wrk -t1 -c64 -d10s --latency -s benchmarks/wrk/stripe.lua URL -- SECRET_KEY
--
-- The same authorization as authorize.lua (manual capture, the 4242 card: pm_card_visa is
-- it), form-encoded as the SDK encodes it (brackets percent-encoded), with the SDK's
-- headers: Bearer key, a fresh Idempotency-Key per request (the SDK sends one on every
-- POST), Stripe-Version, User-Agent and X-Stripe-Client-User-Agent. Non-2xx answers and
-- replays are counted and printed as authorize.lua does, in the line closedloop.py parses.

counter = 0
prefix = nil
secret = nil
non2xx = 0
replayed = 0
answers = 0
statuses = {}
local threads = {}

local body = "amount=1999&currency=eur&confirm=true&capture_method=manual" ..
  "&payment_method=pm_card_visa&metadata%5Bcart%5D=c_77"
local client_user_agent = '{"bindings_version": "16.1.0", "lang": "python", ' ..
  '"httplib": "requests", "lang_version": "3.11.2"}'

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
  prefix = "stripe-python-retry-" .. random_hex(8)
end

function request()
  counter = counter + 1
  local headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Authorization"] = "Bearer " .. secret,
    ["Idempotency-Key"] = prefix .. "-" .. counter,
    ["Stripe-Version"] = "2026-10-28.endive",
    ["User-Agent"] = "Stripe/v1 PythonBindings/16.1.0",
    ["X-Stripe-Client-User-Agent"] = client_user_agent,
  }
  return wrk.format("POST", "/stripe/v1/payment_intents", headers, body)
end

function response(status, headers, _)
  answers = answers + 1
  statuses[status] = (statuses[status] or 0) + 1
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  if headers["Idempotent-Replayed"] or headers["idempotent-replayed"] then
    replayed = replayed + 1
  end
end

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
