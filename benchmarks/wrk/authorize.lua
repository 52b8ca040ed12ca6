-- wrk script: POST /v1/payments with API.md's authorization body, closed loop.
--
--   wrk -t1 -c64 -d10s --latency -s benchmarks/wrk/authorize.lua URL -- SECRET_KEY
--
-- Every request carries a fresh Idempotency-Key (a random per-thread prefix read from
-- /dev/urandom, plus a per-thread counter), so each one is a new authorization, never a
-- replay. The merchant's secret key is the first script argument; without it no
-- Authorization header is sent (the framework baseline, see baseline.lua).
-- Non-2xx answers and replays are counted per thread and printed by `done`
-- (counting.lua) as one line that benchmarks/closedloop.py parses.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "counting.lua")
key_prefix_name = "wrk"

-- A card that never expires during the run: the expiry year follows the clock.
local exp_year = tonumber(os.date("%Y")) + 4
local body = string.format(
  '{"amount":1999,"currency":"eur","capture":"manual",' ..
  '"payment_method":{"type":"card","card":{"number":"4242424242424242",' ..
  '"exp_month":12,"exp_year":%d,"cvc":"123","holder_name":"Ada Lovelace"}},' ..
  '"reference":"bench","metadata":{"cart":"c_77"}}', exp_year)

function request()
  local headers = {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = next_key(),
  }
  if secret then headers["Authorization"] = "Bearer " .. secret end
  return wrk.format("POST", "/v1/payments", headers, body)
end
