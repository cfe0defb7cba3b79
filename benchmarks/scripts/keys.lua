-- wrk script: every request sends the next key from KEYS_FILE in X-API-Key (round robin per thread),
-- starting after the first KEYS_START keys (so consecutive runs continue where the last one stopped).
local keys = {}
local index = tonumber(os.getenv("KEYS_START") or "0")

init = function(args)
  for line in io.lines(os.getenv("KEYS_FILE")) do
    if #line > 0 then keys[#keys + 1] = line end
  end
  index = index % #keys
end

request = function()
  index = index % #keys + 1
  return wrk.format("GET", "/auth", { ["X-API-Key"] = keys[index] })
end
