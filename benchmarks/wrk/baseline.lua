-- wrk script for the framework baseline (benchmarks/baseline_app.py): the very same
-- request as authorize.lua (same body, same fresh Idempotency-Key per request), without
-- the merchant key, which the baseline neither needs nor checks.
--
--   wrk -t1 -c64 -d10s --latency -s benchmarks/wrk/baseline.lua URL
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "authorize.lua")
