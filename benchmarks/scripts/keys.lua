-- wrk script: every request sends the next key from KEYS_FILE in X-API-Key (round robin per thread).
local keys = {}
local index = 0

init = function(args)
  for line in io.lines(os.getenv("KEYS_FILE")) do
    if #line > 0 then keys[#keys + 1] = line end
  end
end

request = function()
  index = index % #keys + 1
  return wrk.format("GET", "/auth", { ["X-API-Key"] = keys[index] })
end
