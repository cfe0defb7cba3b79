-- wrk script: every request sends the next key from KEYS_FILE in X-API-Key (round robin per thread),
-- starting after the first KEYS_START keys (so consecutive runs continue where the last one stopped).
-- The requests are formatted once, in init: formatting one per request in Lua made wrk itself the
-- bottleneck (nginx `return 200` behind this script measured about 93% of its plain-wrk rate).
local requests = {}
local index = tonumber(os.getenv("KEYS_START") or "0")

init = function(args)
  for line in io.lines(os.getenv("KEYS_FILE")) do
    if #line > 0 then requests[#requests + 1] = wrk.format("GET", "/auth", { ["X-API-Key"] = line }) end
  end
  index = index % #requests
end

request = function()
  index = index % #requests + 1
  return requests[index]
end
