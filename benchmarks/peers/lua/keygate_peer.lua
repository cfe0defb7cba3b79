-- The OpenResty-style peer: Keygate's key check written the way Kong's key-auth plugin caches
-- credentials (lua-resty-mlcache): a per-worker LRU (L1), then a shared dict across workers (L2),
-- then Redis on a miss (L3), with the same key format, hash, Redis records and cache lifetimes as
-- a Keygate node, so the two answer the same keys the same way.
--
--   malformed key (prefix, length, base62, CRC-32)  -> 401, no hashing, no Redis
--   SHA-256 of the key (libcrypto through LuaJIT's FFI, as lua-resty-string does)
--   L1 resty.lrucache -> L2 ngx.shared dict -> HMGET <ns>:key:{<hex>} id user scopes status expires_at
--   valid: 200 with X-Keygate-User, X-Keygate-Key-Id, X-Keygate-Scopes; otherwise 401; Redis down: 503
--
-- It does less than a node: no usage counting and no revocation propagation (Kong relies on cache
-- TTLs and cluster events polled every few seconds), so any ratio against it flatters the peer.
local ffi = require "ffi"
local lrucache = require "resty.lrucache"
local redis = require "nginx.redis"

ffi.cdef [[ unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md); ]]
local crypto = ffi.load("libcrypto.so.3")
local digest = ffi.new("unsigned char[32]")

local M = {}
local settings, l1, l2

local base62 = {}
do
  local alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
  for i = 1, #alphabet do base62[alphabet:byte(i)] = i - 1 end
end
local hex = {}
for i = 0, 255 do hex[string.char(i)] = string.format("%02x", i) end

-- settings: redis_host, redis_port, namespace, prefix, lru_items, use_shared_dict,
-- positive_ttl, negative_ttl (seconds)
function M.configure(options)
  settings = options
  settings.key_length = #options.prefix + 1 + 43 + 6
  l1 = assert(lrucache.new(options.lru_items))
  l2 = options.use_shared_dict and ngx.shared.keygate_verdicts or nil
end

local function well_formed(key)
  if #key ~= settings.key_length or key:sub(1, #settings.prefix + 1) ~= settings.prefix .. "_" then return false end
  local body_end = #settings.prefix + 1 + 43
  for i = #settings.prefix + 2, body_end do
    if not base62[key:byte(i)] then return false end
  end
  local checksum = 0
  for i = body_end + 1, #key do
    local digit = base62[key:byte(i)]
    if not digit then return false end
    checksum = checksum * 62 + digit
  end
  return ngx.crc32_long(key:sub(1, body_end)) == checksum
end

local function sha256(key)
  crypto.SHA256(key, #key, digest)
  return ffi.string(digest, 32)
end

-- A verdict is a table {valid, user, id, scopes, expires_ms}; in the shared dict a string.
local invalid = { false }

local function encode(verdict)
  if not verdict[1] then return "0" end
  return table.concat({ "1", verdict[2], verdict[3], verdict[4], verdict[5] or "" }, "\t")
end

local function decode(text)
  if text == "0" then return invalid end
  local parts, i = {}, 1
  for field in (text .. "\t"):gmatch("([^\t]*)\t") do parts[i] = field; i = i + 1 end
  return { true, parts[2], parts[3], parts[4], tonumber(parts[5]) }
end

-- L3: one HMGET on a pooled connection. nil, err when Redis cannot answer.
local function lookup(hex_hash)
  local red = redis:new()
  red:set_timeout(1000)
  local ok, err = red:connect(settings.redis_host, settings.redis_port)
  if not ok then return nil, err end
  local res, err2 = red:hmget(settings.namespace .. ":key:{" .. hex_hash .. "}", "id", "user", "scopes", "status", "expires_at")
  if not res then red:close(); return nil, err2 end
  red:set_keepalive(60000, 256)
  if res[1] == ngx.null or res[4] ~= "active" then return invalid end
  local expires = res[5] ~= ngx.null and tonumber(res[5]) or nil
  return { true, res[2], res[1], res[3] ~= ngx.null and res[3] or "", expires }
end

local function verdict_for(hash)
  local verdict = l1:get(hash)
  if verdict then return verdict end
  local hex_hash = hash:gsub(".", hex)
  if l2 then
    local text = l2:get(hex_hash)
    if text then
      verdict = decode(text)
      l1:set(hash, verdict, verdict[1] and settings.positive_ttl or settings.negative_ttl)
      return verdict
    end
  end
  local err
  verdict, err = lookup(hex_hash)
  if not verdict then return nil, err end
  local ttl = verdict[1] and settings.positive_ttl or settings.negative_ttl
  l1:set(hash, verdict, ttl)
  if l2 then l2:set(hex_hash, encode(verdict), ttl) end
  return verdict
end

local unauthorized = '{"error":"unauthorized","message":"A valid API key is required in the X-API-Key header."}'

local function refuse()
  ngx.status = 401
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #unauthorized
  ngx.header["WWW-Authenticate"] = 'ApiKey realm="keygate"'
  ngx.print(unauthorized)
end

-- The key's verdict, or nil once the refusal (401) or 503 is written.
local function checked()
  local key = ngx.var.http_x_api_key
  if not key or not well_formed(key) then refuse(); return nil end
  local verdict, err = verdict_for(sha256(key))
  if not verdict then
    ngx.log(ngx.WARN, "redis: ", err)
    ngx.status = 503
    ngx.header["Retry-After"] = "1"
    ngx.header["Content-Length"] = 23
    ngx.print('{"error":"unavailable"}')
    return nil
  end
  if not verdict[1] or (verdict[5] and verdict[5] <= ngx.now() * 1000) then refuse(); return nil end
  return verdict
end

function M.auth()
  local verdict = checked()
  if not verdict then return end
  ngx.header["X-Keygate-User"] = verdict[2]
  ngx.header["X-Keygate-Key-Id"] = verdict[3]
  ngx.header["X-Keygate-Scopes"] = verdict[4]
  ngx.header["Content-Length"] = 0
  return ngx.exit(ngx.HTTP_OK)
end

-- The same check in the access phase of a proxied location (the gateway scenario, Kong's shape): on
-- success the identity goes upstream as request headers and the key does not; otherwise the request
-- ends here with the same 401 or 503 (after the response is written, an exit status of 200 or
-- more ends the request without proxying).
function M.access()
  local verdict = checked()
  if not verdict then return ngx.exit(ngx.HTTP_OK) end
  ngx.req.set_header("X-Keygate-User", verdict[2])
  ngx.req.set_header("X-Keygate-Key-Id", verdict[3])
  ngx.req.set_header("X-Keygate-Scopes", verdict[4])
  ngx.req.clear_header("X-API-Key")
end

return M
