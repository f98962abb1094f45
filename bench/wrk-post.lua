-- wrk script for scripts/bench-issuance: POST to WRK_PATH with WRK_AUTH as the
-- Authorization header and the contents of WRK_BODY_FILE as the body, keep-alive.
-- Counts 200s, 429s and other statuses per thread and prints one JSON line at the end.
local path = os.getenv("WRK_PATH") or "/v1/certs"
local body_file = os.getenv("WRK_BODY_FILE") or ""
local body = ""
if body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  body = f:read("*a")
  f:close()
end
wrk.method = "POST"
wrk.path = path
wrk.body = body
wrk.headers["Authorization"] = os.getenv("WRK_AUTH")
wrk.headers["Content-Type"] = "text/plain"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok_ = 0
  s429_ = 0
  bad_ = 0
end

function response(status, headers, body)
  if status == 200 then
    ok_ = ok_ + 1
  elseif status == 429 then
    s429_ = s429_ + 1
    bad_ = bad_ + 1
  else
    bad_ = bad_ + 1
  end
end

function done(summary, latency, requests)
  local ok, s429, bad = 0, 0, 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("ok_")
    s429 = s429 + t:get("s429_")
    bad = bad + t:get("bad_")
  end
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"ok":%d,"s429":%d,"bad":%d,"p50_us":%d,"p99_us":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, ok, s429, bad,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout))
end
