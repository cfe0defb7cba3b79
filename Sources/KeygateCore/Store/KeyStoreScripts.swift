import KeygateRedis

/// The Lua scripts behind every key mutation. Each one, atomically: changes the record, bumps its
/// version, appends exactly one event per changed key to the capped Stream (no secret in it; the
/// hash is there so nodes can replay invalidations), increments the epoch, and publishes the key's
/// hash on the invalidation channel. No mutation can forget to invalidate.
///
/// Error replies start with a word the store maps to `KeygateError`: NOTFOUND, DUPLICATE, CONFLICT.
enum KeyStoreScripts {
    /// KEYS: record, id index, user set, stream, epoch.
    /// ARGV: hash, id, user, name, scopes, expires_at ms or "", metadata JSON, now ms, actor, maxlen, channel,
    /// namespace, most active keys the user may hold (0: no limit; counted here so concurrent creates
    /// cannot both pass the check).
    static let create = RedisScript("""
    if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('DUPLICATE a key with this hash exists') end
    if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('DUPLICATE a key with this id exists') end
    local limit = tonumber(ARGV[13])
    if limit > 0 then
      local active = 0
      for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
        local hash = redis.call('GET', ARGV[12] .. ':id:' .. id)
        if hash then
          local fields = redis.call('HMGET', ARGV[12] .. ':key:{' .. hash .. '}', 'status', 'expires_at')
          if fields[1] == 'active' and (fields[2] == false or fields[2] == '' or tonumber(fields[2]) > tonumber(ARGV[8])) then
            active = active + 1
          end
        end
      end
      if active >= limit then return redis.error_reply('LIMIT the user already has ' .. active .. ' active keys') end
    end
    redis.call('HSET', KEYS[1], 'id', ARGV[2], 'user', ARGV[3], 'name', ARGV[4], 'scopes', ARGV[5],
      'status', 'active', 'created_at', ARGV[8], 'expires_at', ARGV[6], 'metadata', ARGV[7], 'version', 1)
    redis.call('SET', KEYS[2], ARGV[1])
    redis.call('SADD', KEYS[3], ARGV[2])
    local event = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[10], '*', 'type', 'created', 'key_id', ARGV[2],
      'user', ARGV[3], 'actor', ARGV[9], 'time', ARGV[8], 'version', 1, 'hash', ARGV[1])
    redis.call('INCR', KEYS[5])
    redis.call('PUBLISH', ARGV[11], ARGV[1])
    return event
    """)

    /// Revoke, disable or enable. Revoking a revoked key is a successful no-op (no event).
    /// KEYS: record, stream, epoch. ARGV: id, new status, now ms, actor, maxlen, channel, hash.
    /// Returns {changed 0/1, version}.
    static let setStatus = RedisScript("""
    if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return redis.error_reply('NOTFOUND no such key') end
    local current = redis.call('HGET', KEYS[1], 'status')
    if current == ARGV[2] then return {0, tonumber(redis.call('HGET', KEYS[1], 'version'))} end
    if current == 'revoked' then return redis.error_reply('CONFLICT the key is revoked; revocation is final') end
    redis.call('HSET', KEYS[1], 'status', ARGV[2])
    if ARGV[2] == 'revoked' then redis.call('HSET', KEYS[1], 'revoked_at', ARGV[3]) end
    local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
    local kind = ({revoked = 'revoked', disabled = 'disabled', active = 'enabled'})[ARGV[2]]
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'type', kind, 'key_id', ARGV[1],
      'user', redis.call('HGET', KEYS[1], 'user'), 'actor', ARGV[4], 'time', ARGV[3], 'version', version, 'hash', ARGV[7])
    redis.call('INCR', KEYS[3])
    redis.call('PUBLISH', ARGV[6], ARGV[7])
    return {1, version}
    """)

    /// Name, scopes, expiry, metadata. KEYS: record, stream, epoch.
    /// ARGV: id, now ms, actor, maxlen, channel, hash, then field/value pairs. Returns the new version.
    static let update = RedisScript("""
    if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return redis.error_reply('NOTFOUND no such key') end
    if redis.call('HGET', KEYS[1], 'status') == 'revoked' then return redis.error_reply('CONFLICT the key is revoked; revocation is final') end
    local fields = {}
    for i = 7, #ARGV, 2 do
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
      fields[#fields + 1] = ARGV[i]
    end
    local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'updated', 'key_id', ARGV[1],
      'user', redis.call('HGET', KEYS[1], 'user'), 'actor', ARGV[3], 'time', ARGV[2], 'version', version,
      'fields', table.concat(fields, ','), 'hash', ARGV[6])
    redis.call('INCR', KEYS[3])
    redis.call('PUBLISH', ARGV[5], ARGV[6])
    return version
    """)

    /// A successor with the same user, name, scopes, metadata and expiry; the old key now expires at
    /// min(its expiry, now + grace). Refused when the key was already rotated (so concurrent rotations
    /// leave exactly one successor) or is revoked.
    /// KEYS: old record, new record, new id index, user set, stream, epoch.
    /// ARGV: old id, old hash, new hash, new id, now ms, grace-end ms, actor, maxlen, channel.
    /// Returns the new record's version (1).
    static let rotate = RedisScript("""
    if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return redis.error_reply('NOTFOUND no such key') end
    local old = redis.call('HMGET', KEYS[1], 'status', 'rotated_to', 'user', 'name', 'scopes', 'expires_at', 'metadata')
    if old[1] == 'revoked' then return redis.error_reply('CONFLICT the key is revoked; revocation is final') end
    if old[2] and old[2] ~= '' then return redis.error_reply('CONFLICT the key was already rotated to ' .. old[2]) end
    if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
      return redis.error_reply('DUPLICATE the successor collides with an existing key')
    end
    local expires = old[6] or ''
    local graceEnd = ARGV[6]
    if expires == '' or tonumber(graceEnd) < tonumber(expires) then
      redis.call('HSET', KEYS[1], 'expires_at', graceEnd)
    end
    redis.call('HSET', KEYS[1], 'rotated_to', ARGV[4])
    local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('HSET', KEYS[2], 'id', ARGV[4], 'user', old[3], 'name', old[4], 'scopes', old[5], 'status', 'active',
      'created_at', ARGV[5], 'expires_at', expires, 'metadata', old[7] or '{}', 'version', 1, 'rotated_from', ARGV[1])
    redis.call('SET', KEYS[3], ARGV[3])
    redis.call('SADD', KEYS[4], ARGV[4])
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 'type', 'rotated', 'key_id', ARGV[1], 'user', old[3],
      'actor', ARGV[7], 'time', ARGV[5], 'version', version, 'successor_id', ARGV[4], 'hash', ARGV[2])
    redis.call('INCR', KEYS[6])
    redis.call('PUBLISH', ARGV[9], ARGV[2])
    return version
    """)

    /// Revokes every active or disabled key of a user: one event and one publish per key changed.
    /// Record keys are derived inside the script, so it runs on standalone Redis only (Cluster later).
    /// KEYS: user set, stream, epoch. ARGV: namespace, now ms, actor, maxlen, channel. Returns the count;
    /// NOTFOUND when the user has no keys at all (so a typo is not reported as "0 revoked").
    static let revokeUser = RedisScript("""
    if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NOTFOUND the user has no keys') end
    local revoked = 0
    for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
      local hash = redis.call('GET', ARGV[1] .. ':id:' .. id)
      if hash then
        local record = ARGV[1] .. ':key:{' .. hash .. '}'
        local status = redis.call('HGET', record, 'status')
        if status and status ~= 'revoked' then
          redis.call('HSET', record, 'status', 'revoked', 'revoked_at', ARGV[2])
          local version = redis.call('HINCRBY', record, 'version', 1)
          redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'revoked', 'key_id', id,
            'user', redis.call('HGET', record, 'user'), 'actor', ARGV[3], 'time', ARGV[2], 'version', version, 'hash', hash)
          redis.call('INCR', KEYS[3])
          redis.call('PUBLISH', ARGV[5], hash)
          revoked = revoked + 1
        end
      end
    end
    return revoked
    """)

    /// Applies one node's usage batch exactly once: the batch marker is set NX first, so a retry
    /// after an ambiguous timeout (the reply lost, the write done) changes nothing.
    /// KEYS: batch marker, then per key: usage hash, daily bucket, hourly bucket.
    /// ARGV: marker ttl s, daily ttl s, hourly ttl s, then per key: count, last-used ms.
    /// Returns 1 when applied, 0 when this batch id was applied before.
    static let applyUsage = RedisScript("""
    if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
    local n = (#KEYS - 1) / 3
    for i = 0, n - 1 do
      local count = tonumber(ARGV[4 + i * 2])
      local last = tonumber(ARGV[5 + i * 2])
      local usage = KEYS[2 + i * 3]
      redis.call('HINCRBY', usage, 'total', count)
      local previous = tonumber(redis.call('HGET', usage, 'last_used_at') or '0')
      if last > previous then redis.call('HSET', usage, 'last_used_at', last) end
      -- A bucket's expiry is set when the bucket is created (its first increment), not every flush.
      if redis.call('INCRBY', KEYS[3 + i * 3], count) == count then redis.call('EXPIRE', KEYS[3 + i * 3], ARGV[2]) end
      if redis.call('INCRBY', KEYS[4 + i * 3], count) == count then redis.call('EXPIRE', KEYS[4 + i * 3], ARGV[3]) end
    end
    return 1
    """)
}
