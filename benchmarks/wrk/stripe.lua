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

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "counting.lua")
key_prefix_name = "stripe-python-retry"

local body = "amount=1999&currency=eur&confirm=true&capture_method=manual" ..
  "&payment_method=pm_card_visa&metadata%5Bcart%5D=c_77"
local client_user_agent = '{"bindings_version": "16.1.0", "lang": "python", ' ..
  '"httplib": "requests", "lang_version": "3.11.2"}'

function request()
  local headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Authorization"] = "Bearer " .. secret,
    ["Idempotency-Key"] = next_key(),
    ["Stripe-Version"] = "2026-10-28.endive",
    ["User-Agent"] = "Stripe/v1 PythonBindings/16.1.0",
    ["X-Stripe-Client-User-Agent"] = client_user_agent,
  }
  return wrk.format("POST", "/stripe/v1/payment_intents", headers, body)
end
