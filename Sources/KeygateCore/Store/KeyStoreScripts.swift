import KeygateRedis

/// The Lua scripts behind every key mutation. Each script touches one Redis Cluster slot, so the
/// same scripts run on standalone Redis, behind Sentinel and on a Cluster.
///
/// A mutation runs in four steps (`KeyStore.perform`), each one atomic in its own slot:
/// 1. `begin`, in the log slot (`ns:events`): registers the operation and what its event will say
///    under `{ns:events}:pending`, stamped with the log server's clock.
/// 2. an `apply*` script, in the key's slot: checks and changes the record, bumps its version,
///    notes the operation in `ns:unlogged:{hash}` and publishes the hash. Refused (`EXPIRED`) when it
///    runs more than `window` ms after `begin`, so a stale retry cannot act behind a repair's back.
/// 3. `log`, in the log slot: removes the registration and, exactly once, appends the event to the
///    Stream (audit log and invalidation replay), bumps the epoch and publishes the hash again.
/// 4. `HDEL ns:unlogged:{hash} <op>`, in the key's slot.
///
/// A crash between steps leaves a registration behind; `KeyStore.repair` completes it (applied:
/// log it) or drops it (never applied, and too old to be applied now).
///
/// Error replies start with a word the store maps to `KeygateError`: NOTFOUND, DUPLICATE, CONFLICT,
/// STALE (the record changed since it was read: retried), EXPIRED.
enum KeyStoreScripts {
    /// Shared by the `apply*` scripts: refuse an operation whose `begin` is older than the window.
    private static let deadline = """
    local clock = redis.call('TIME')
    local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
    if now > tonumber(ARGV[2]) + tonumber(ARGV[3]) then
      return redis.error_reply('EXPIRED the change was not applied within ' .. ARGV[3] .. ' ms of its registration')
    end
    local others = {}
    for _, op in ipairs(redis.call('HKEYS', KEYS[2])) do if op ~= ARGV[1] then others[#others + 1] = op end end

    """

    /// Step 1. KEYS: pending. ARGV: op id, payload, op id, payload... Returns the log server's time (ms).
    static let begin = RedisScript("""
    local clock = redis.call('TIME')
    local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
    for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], now .. ' ' .. ARGV[i + 1]) end
    return now
    """)

    /// Step 3. KEYS: pending, stream, epoch. ARGV: stream maxlen, channel, then per operation: op id,
    /// version ("0": nothing changed: the registration goes, nothing is logged or published), hash.
    /// An operation no longer registered was logged before (by a repair or a concurrent completion):
    /// not logged twice, its hash published again. Returns one event id per operation ("" when none
    /// was appended now).
    static let log = RedisScript("""
    local ids = {}
    for i = 3, #ARGV, 3 do
      local entry = redis.call('HGET', KEYS[1], ARGV[i])
      local id = ''
      if entry then redis.call('HDEL', KEYS[1], ARGV[i]) end
      if ARGV[i + 1] ~= '0' then
        if entry then
          local fields = cjson.decode(string.sub(entry, string.find(entry, ' ', 1, true) + 1)).event
          fields[#fields + 1] = 'version'
          fields[#fields + 1] = ARGV[i + 1]
          id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
          redis.call('INCR', KEYS[3])
        end
        redis.call('PUBLISH', ARGV[2], ARGV[i + 2])
      end
      ids[#ids + 1] = id
    end
    return ids
    """)

    /// For `repair`. KEYS: pending. Returns {now ms, op id, entry, op id, entry...}.
    static let pending = RedisScript("""
    local clock = redis.call('TIME')
    local reply = {tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)}
    for _, value in ipairs(redis.call('HGETALL', KEYS[1])) do reply[#reply + 1] = value end
    return reply
    """)

    /// Step 2 of create. KEYS: record, unlogged.
    /// ARGV: op id, issued ms, window ms, channel, hash, id, user, name, scopes, expires_at ms or "",
    /// metadata JSON, now ms, rate limits (`RateLimit.storageText`), limit id or "", credits
    /// (`CreditSetting.storageText`) or "", the user's rate limits and credits or "".
    /// Returns {1, version, other unlogged ops...}.
    static let applyCreate = RedisScript(deadline + """
    if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('DUPLICATE a key with this hash exists') end
    redis.call('HSET', KEYS[1], 'id', ARGV[6], 'user', ARGV[7], 'name', ARGV[8], 'scopes', ARGV[9],
      'status', 'active', 'created_at', ARGV[12], 'expires_at', ARGV[10], 'metadata', ARGV[11], 'version', 1)
    if ARGV[13] and ARGV[13] ~= '' then redis.call('HSET', KEYS[1], 'rate_limits', ARGV[13]) end
    if ARGV[14] and ARGV[14] ~= '' then redis.call('HSET', KEYS[1], 'limit_id', ARGV[14]) end
    if ARGV[15] and ARGV[15] ~= '' then redis.call('HSET', KEYS[1], 'credits', ARGV[15]) end
    if ARGV[16] and ARGV[16] ~= '' then redis.call('HSET', KEYS[1], 'user_rate_limits', ARGV[16]) end
    if ARGV[17] and ARGV[17] ~= '' then redis.call('HSET', KEYS[1], 'user_credits', ARGV[17]) end
    redis.call('HSET', KEYS[2], ARGV[1], 1)
    redis.call('PUBLISH', ARGV[4], ARGV[5])
    return {1, 1, unpack(others)}
    """)

    /// Step 2 of revoke, disable, enable. Revoking a revoked key changes nothing (no event).
    /// KEYS: record, unlogged. ARGV: op id, issued ms, window ms, channel, hash, id, new status, now ms.
    /// Returns {changed 0/1, version, other unlogged ops...}.
    static let applyStatus = RedisScript(deadline + """
    if redis.call('HGET', KEYS[1], 'id') ~= ARGV[6] then return redis.error_reply('NOTFOUND no such key') end
    local current = redis.call('HGET', KEYS[1], 'status')
    if current == ARGV[7] then return {0, tonumber(redis.call('HGET', KEYS[1], 'version')), unpack(others)} end
    if current == 'revoked' then return redis.error_reply('CONFLICT the key is revoked; revocation is final') end
    redis.call('HSET', KEYS[1], 'status', ARGV[7])
    if ARGV[7] == 'revoked' then redis.call('HSET', KEYS[1], 'revoked_at', ARGV[8]) end
    local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('HSET', KEYS[2], ARGV[1], version)
    redis.call('PUBLISH', ARGV[4], ARGV[5])
    return {1, version, unpack(others)}
    """)

    /// Step 2 of update (name, scopes, expiry, metadata, rate limits, credits). KEYS: record, unlogged.
    /// ARGV: op id, issued ms, window ms, channel, hash, id, then field/value pairs.
    /// Returns {1, version, other unlogged ops...}.
    static let applyUpdate = RedisScript(deadline + """
    if redis.call('HGET', KEYS[1], 'id') ~= ARGV[6] then return redis.error_reply('NOTFOUND no such key') end
    if redis.call('HGET', KEYS[1], 'status') == 'revoked' then return redis.error_reply('CONFLICT the key is revoked; revocation is final') end
    for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
    local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('HSET', KEYS[2], ARGV[1], version)
    redis.call('PUBLISH', ARGV[4], ARGV[5])
    return {1, version, unpack(others)}
    """)

    /// Step 2 of rotate, on the old key: links it to its successor and makes it expire at
    /// min(its expiry, grace end). Refused when the key was already rotated (concurrent rotations
    /// leave exactly one successor), is revoked, or changed since it was read (STALE: the successor
    /// copies what was read). KEYS: record, unlogged.
    /// ARGV: op id, issued ms, window ms, channel, hash, id, version read, successor id, grace end ms.
    /// Returns {1, version, other unlogged ops...}.
    static let applyRotate = RedisScript(deadline + """
    if redis.call('HGET', KEYS[1], 'id') ~= ARGV[6] then return redis.error_reply('NOTFOUND no such key') end
    local old = redis.call('HMGET', KEYS[1], 'status', 'rotated_to', 'expires_at', 'version')
    if old[1] == 'revoked' then return redis.error_reply('CONFLICT the key is revoked; revocation is final') end
    if old[2] and old[2] ~= '' then return redis.error_reply('CONFLICT the key was already rotated to ' .. old[2]) end
    if old[4] ~= ARGV[7] then return redis.error_reply('STALE the key changed while it was being rotated') end
    local expires = old[3] or ''
    if expires == '' or tonumber(ARGV[9]) < tonumber(expires) then redis.call('HSET', KEYS[1], 'expires_at', ARGV[9]) end
    redis.call('HSET', KEYS[1], 'rotated_to', ARGV[8])
    local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('HSET', KEYS[2], ARGV[1], version)
    redis.call('PUBLISH', ARGV[4], ARGV[5])
    return {1, version, unpack(others)}
    """)

    /// The successor of a rotation (after `applyRotate`, or from a repair), in its own slot. Idempotent:
    /// a successor already written with this id is success.
    /// KEYS: record. ARGV: channel, hash, id, user, name, scopes, expires_at, metadata, now ms, predecessor id,
    /// rate limits, limit id (the chain's first key), credits, the user's rate limits and credits.
    /// Returns 1 when written now, 0 when it existed.
    static let writeSuccessor = RedisScript("""
    if redis.call('EXISTS', KEYS[1]) == 1 then
      if redis.call('HGET', KEYS[1], 'id') == ARGV[3] then return 0 end
      return redis.error_reply('DUPLICATE the successor collides with an existing key')
    end
    redis.call('HSET', KEYS[1], 'id', ARGV[3], 'user', ARGV[4], 'name', ARGV[5], 'scopes', ARGV[6], 'status', 'active',
      'created_at', ARGV[9], 'expires_at', ARGV[7], 'metadata', ARGV[8], 'version', 1, 'rotated_from', ARGV[10])
    if ARGV[11] and ARGV[11] ~= '' then redis.call('HSET', KEYS[1], 'rate_limits', ARGV[11]) end
    if ARGV[12] and ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'limit_id', ARGV[12]) end
    if ARGV[13] and ARGV[13] ~= '' then redis.call('HSET', KEYS[1], 'credits', ARGV[13]) end
    if ARGV[14] and ARGV[14] ~= '' then redis.call('HSET', KEYS[1], 'user_rate_limits', ARGV[14]) end
    if ARGV[15] and ARGV[15] ~= '' then redis.call('HSET', KEYS[1], 'user_credits', ARGV[15]) end
    redis.call('PUBLISH', ARGV[1], ARGV[2])
    return 1
    """)

    /// Releases a lock only if this caller still holds it. KEYS: lock. ARGV: token.
    static let unlock = RedisScript("""
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """)

    /// Applies one node's usage batch to the counters of one slot, exactly once. A node's batches
    /// carry increasing sequence numbers and a batch is resent unchanged until acknowledged, so a
    /// per-slot high-water mark per node run is enough: a retry after an ambiguous timeout (the reply
    /// lost, the write done) changes nothing. Keys with uses come first, then keys with refusals
    /// (a key with both is in both lists), so a batch without refusals costs what it did before.
    /// KEYS: applied mark, then per key with uses: usage hash, daily bucket, hourly bucket; then per
    /// key with refusals: daily refusals hash, hourly refusals hash.
    /// ARGV: sequence, mark ttl s, daily ttl s, hourly ttl s, keys with uses, then per key with uses:
    /// count, last-used ms; then per key with refusals: rate limited, usage exceeded, forbidden.
    /// Returns 1 when applied, 0 when this batch (or a later one) was applied before.
    static let applyUsage = RedisScript("""
    local applied = tonumber(redis.call('GET', KEYS[1]) or '0')
    if tonumber(ARGV[1]) <= applied then return 0 end
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
    local n = tonumber(ARGV[5])
    for i = 0, n - 1 do
      local count = tonumber(ARGV[6 + i * 2])
      local last = tonumber(ARGV[7 + i * 2])
      local usage = KEYS[2 + i * 3]
      redis.call('HINCRBY', usage, 'total', count)
      local previous = tonumber(redis.call('HGET', usage, 'last_used_at') or '0')
      if last > previous then redis.call('HSET', usage, 'last_used_at', last) end
      -- A bucket's expiry is set when the bucket is created (its first increment), not every flush.
      if redis.call('INCRBY', KEYS[3 + i * 3], count) == count then redis.call('EXPIRE', KEYS[3 + i * 3], ARGV[3]) end
      if redis.call('INCRBY', KEYS[4 + i * 3], count) == count then redis.call('EXPIRE', KEYS[4 + i * 3], ARGV[4]) end
    end
    local names = {'rate_limited', 'usage_exceeded', 'forbidden'}
    for j = 0, (#KEYS - 1 - n * 3) / 2 - 1 do
      for k = 1, 2 do
        local bucket = KEYS[1 + n * 3 + j * 2 + k]
        local fresh = redis.call('EXISTS', bucket) == 0
        for f = 1, 3 do
          local value = tonumber(ARGV[5 + n * 2 + j * 3 + f])
          if value > 0 then redis.call('HINCRBY', bucket, names[f], value) end
        end
        if fresh then redis.call('EXPIRE', bucket, ARGV[2 + k]) end
      end
    end
    return 1
    """)

    /// Tokens of one rate-limit window, leased by a node that then admits requests from them without
    /// asking Redis again. The window's key counts every token handed out, so the nodes together
    /// never admit more than the limit in a window. A lease gets at most half of what is left (at
    /// least one), so the last tokens of a window are shared out rather than held by one node.
    /// KEYS: the window's counter (in the key's slot). ARGV: limit, tokens wanted, ttl ms.
    /// Returns {granted, handed out in this window so far (granted included)}.
    static let leaseTokens = RedisScript("""
    local used = tonumber(redis.call('GET', KEYS[1]) or '0')
    local left = tonumber(ARGV[1]) - used
    if left <= 0 then return {0, used} end
    local take = math.min(tonumber(ARGV[2]), math.max(1, math.floor(left / 2)))
    redis.call('SET', KEYS[1], used + take, 'PX', ARGV[3])
    return {take, used + take}
    """)

    /// Credits of a key's balance, leased by a node that spends them without asking Redis again;
    /// what it does not spend it gives back (`returnCredits`). Redis subtracts every lease, so the
    /// nodes together never admit more than the balance. The balance starts from the record's
    /// setting the first time a node with that setting asks (a newer setting replaces it; a node
    /// still holding an older one draws on the balance as it is and refills nothing), and is set to
    /// the refill amount once per refill period. A lease gets what its waiting requests need whole
    /// (or nothing, when the balance is smaller), plus up to `wanted` more but at most a quarter of
    /// the balance, so the last credits are shared out rather than held by one node.
    /// KEYS: the balance. ARGV: set remaining, set ms, set period, refill amount (-1: none), the
    /// node's current period, credits needed now, credits wanted.
    /// Returns {granted, balance left after it, the balance's refill period}.
    static let leaseCredits = RedisScript("""
    local b = redis.call('HMGET', KEYS[1], 'remaining', 'set', 'period')
    local remaining, set, period = tonumber(b[1]), tonumber(b[2]), tonumber(b[3])
    local setting = tonumber(ARGV[2])
    local current = not set or set <= setting
    if not set or set < setting then remaining = tonumber(ARGV[1]); set = setting; period = tonumber(ARGV[3]) end
    if current and tonumber(ARGV[4]) >= 0 and tonumber(ARGV[5]) > period then
      remaining = tonumber(ARGV[4]); period = tonumber(ARGV[5])
    end
    local need = tonumber(ARGV[6])
    local take = 0
    if need <= remaining then take = math.min(remaining, need + math.min(tonumber(ARGV[7]), math.floor((remaining - need) / 4))) end
    remaining = remaining - take
    redis.call('HSET', KEYS[1], 'remaining', remaining, 'set', set, 'period', period)
    return {take, remaining, period}
    """)

    /// Gives back credits a node leased and did not spend, if the balance is still the one they
    /// came from (same setting, same refill period); otherwise they are dropped (a refill or a new
    /// setting replaced the balance). KEYS: the balance. ARGV: set ms, period, credits.
    /// Returns 1 when added back, 0 when dropped.
    static let returnCredits = RedisScript("""
    local b = redis.call('HMGET', KEYS[1], 'set', 'period')
    if b[1] ~= ARGV[1] or b[2] ~= ARGV[2] then return 0 end
    redis.call('HINCRBY', KEYS[1], 'remaining', ARGV[3])
    return 1
    """)

    /// Sets a user's own limits (the record every key of the user copies). KEYS: the user's limits.
    /// ARGV: rate limits text, credits text (each "" for none; "-" leaves the field as it is).
    /// Returns the new version.
    static let setUserLimits = RedisScript("""
    if ARGV[1] ~= '-' then redis.call('HSET', KEYS[1], 'rate_limits', ARGV[1]) end
    if ARGV[2] ~= '-' then redis.call('HSET', KEYS[1], 'credits', ARGV[2]) end
    return redis.call('HINCRBY', KEYS[1], 'version', 1)
    """)

    /// A value with an expiry, through the script path (so `WAIT` confirms it like every change).
    /// KEYS: the key. ARGV: value, ttl ms.
    static let setWithExpiry = RedisScript("""
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
    """)
}
