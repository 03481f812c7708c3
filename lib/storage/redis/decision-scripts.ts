/**
 * The decision scripts of the Redis store (key layout 4, see `scripts.ts`): `consume`
 * decides a plan and commits every tier or none; `peek` reads it; `forget` resets keys.
 *
 * One decision reads the server clock once (`TIME`, or the app's clamped time), reads the
 * tracker hash once (HMGET of the plan's bucket, counter and sliding-log fields and `~e`),
 * writes it once (HSET), and extends its TTL only when it must (one PEXPIRE). With hash-field
 * TTLs the write sets the fields' TTL too: one HSETEX on Redis 8, HSET and one HPEXPIRE on
 * 7.4. A sliding log with more than 64 live entries adds its sorted set's calls (ZRANGE,
 * ZADD, PEXPIRE, and ZREMRANGEBYRANK once it holds `limit` entries), a concurrency tier its
 * hash's.
 */
import { HELPERS, MAX_TTL_MS } from './lua-helpers.js';

/**
 * The most tiers the generic scripts decide in one plan. A write names each of a hash's
 * fields in one call (`unpack`, which Lua 5.1 refuses past about 8,000 values: two per
 * tier): a larger plan is refused before anything is read or written, rather than fail
 * half-way through its writes.
 */
export const MAX_GENERIC_TIERS = 3000;

/**
 * The plan's figures from ARGV, and the state of every tier read once (consume and peek).
 * `WRITES` is set before it: false in the read-only peek.
 */
const PRELUDE = `${HELPERS}
-- ARGV[7] H, the number of tracker hashes (KEYS[1..H]); the own keys of the tiers that have
-- one (sliding logs, concurrency) follow them, in tier order, then the clock key (app clock).
-- Tier i's figures at ARGV[9i..9i+8] = kind, limit, cost, a, b, c, d, hash index, field.
local n, H = tonumber(ARGV[2]), tonumber(ARGV[7])
if n > ${MAX_GENERIC_TIERS} then return redis.error_reply('wsrl: a plan of more than ${MAX_GENERIC_TIERS} tiers') end
local fieldTtls = tonumber(ARGV[8])
local kind, limit, cost, pa, pb, pc, pd, hx, field = {}, {}, {}, {}, {}, {}, {}, {}, {}
for i = 1, n do
  local o = 9 * i - 1
  kind[i] = tonumber(ARGV[o + 1])
  limit[i] = tonumber(ARGV[o + 2])
  cost[i] = tonumber(ARGV[o + 3])
  pa[i] = tonumber(ARGV[o + 4])
  pb[i] = tonumber(ARGV[o + 5])
  pc[i] = tonumber(ARGV[o + 6])
  pd[i] = tonumber(ARGV[o + 7])
  hx[i] = tonumber(ARGV[o + 8])
  field[i] = ARGV[o + 9]
end
-- A bucket's or a counter's state is a field of its tracker hash only: its key is not named
-- (on a Cluster slot being migrated, a call naming a key that does not exist is refused
-- with TRYAGAIN).
local tierKey, kx = {}, H
for i = 1, n do
  if kind[i] == 1 or kind[i] == 3 then
    kx = kx + 1
    tierKey[i] = KEYS[kx]
  end
end
local clockKey = nil
if ARGV[1] ~= '' then clockKey = KEYS[kx + 1] end
local now = readClock(ARGV[1], clockKey)

-- Each tracker hash read once: its expiry field and the plan's fields in it.
local raw, hexp = {}, {}
for h = 1, H do
  local names, at = { '~e' }, {}
  for i = 1, n do
    if hx[i] == h then
      names[#names + 1] = field[i]
      at[#at + 1] = i
    end
  end
  -- A key of another type (a key of an earlier layout, a value written by hand) reads as an
  -- empty hash and is deleted by consume: dropped, never an error.
  local vals = redis.pcall('HMGET', KEYS[h], unpack(names))
  if vals.err then
    if WRITES then redis.call('DEL', KEYS[h]) end
    vals = {}
  end
  hexp[h] = double(vals[1])
  for j = 1, #at do raw[at[j]] = vals[j + 1] end
end

-- The state of every tier. Bucket: fullAt (NEG when fresh). Log: the timestamp that must
-- leave the window before the cost fits (NEG when it fits whatever the timestamps), full[i]
-- when the log holds more than limit - cost entries, and its entries in logs[i] (nil when
-- it lives in its sorted set). Counter: {start, prev, curr}. Concurrency: {held, latest
-- expiry, dead fields}, fresh[i] when its hash is empty.
local S, fresh, full, logs = {}, {}, {}, {}
for i = 1, n do
  local key, k = tierKey[i], kind[i]
  if k == 0 then
    S[i] = double(raw[i]) or NEG
  elseif k == 1 then
    S[i], full[i], logs[i] = logRead(raw[i], key, limit[i], cost[i], WRITES)
  elseif k == 2 then
    S[i] = counterState(raw[i])
  else
    local held, latest, dead, flat = readLeases(key, now, WRITES)
    S[i] = { held, latest, dead }
    fresh[i] = #flat == 0
  end
end

-- Whole units a tier has left at now.
local function remaining(i)
  local k = kind[i]
  if k == 0 then
    local fullAt = S[i]
    if fullAt <= now then return math.floor(limit[i]) end
    local tokens = limit[i] - (fullAt - now) / pc[i]
    if tokens > 0 then return math.floor(tokens) end
    return 0
  elseif k == 1 then
    local live = logLive(logs[i], tierKey[i], now, pa[i])
    return math.max(0, math.floor(limit[i]) - live)
  elseif k == 2 then
    local st = S[i]
    local start, p, c = rolled(st[1], st[2], st[3], now, pa[i])
    return math.max(0, math.floor(limit[i] - weighted(start, p, c, now, pa[i])))
  end
  return math.max(0, math.floor(limit[i] - S[i][1]))
end
`;

/**
 * `consume`: decides a plan atomically; commits every tier only if every tier allows.
 *
 * KEYS[1..H]  the tracker hashes of the plan's buckets, counters and logs (one per tracker)
 * KEYS[H+1..]  the own keys of the tiers that have one (sliding logs, concurrency), in plan
 *             order; then the clock key (app clock only)
 * ARGV[1]     the app time in ms, or '' to read Redis `TIME`
 * ARGV[2]     n, the number of tiers
 * ARGV[3]     nonce, unique per call (sliding-log members)
 * ARGV[4]     the store instance's id (concurrency)
 * ARGV[5]     the lease name (concurrency)
 * ARGV[6]     lease TTL in ms (concurrency)
 * ARGV[7]     H, the number of tracker hashes
 * ARGV[8]     the field-TTL mode (`FieldTtlMode`): '0' none, '1' HPEXPIRE (Redis 7.4), '2' HSETEX (8.0+)
 * ARGV[9i..9i+8]  tier i (from 1): kind, limit, cost, a, b, c, d, hash index, field, where
 *             a, b, c, d are token bucket: slack, span, intervalMs, nearBound; sliding log and
 *             counter: windowMs; concurrency: nothing. Hash index: 1..H for a bucket,
 *             counter or log, 0 for concurrency; field: its name in that hash.
 *
 * Reply: 1 when allowed; {1, index} when allowed and that token bucket (the first in plan
 * order, 0-based) is left with less than a fifth of its capacity (`5 * (fullAt - now) >
 * nearBound`); else {0, index of the deciding tier (0-based), retryAfter in whole ms (>= 1),
 * that tier's remaining units}, where retryAfter -1 stands for never (a cost above the
 * limit). The deciding tier is the one with the longest wait; ties go to the earliest tier.
 */
export const CONSUME_LUA = `local WRITES = true
${PRELUDE}
local allowed = true
for i = 1, n do
  local k = kind[i]
  local ok
  if k == 3 then
    if fresh[i] then ok = cost[i] <= limit[i] else ok = S[i][1] + cost[i] <= limit[i] end
  elseif cost[i] > limit[i] then
    -- A cost above the limit never fits.
    ok = false
  elseif k == 0 then
    ok = S[i] - now <= pa[i]
  elseif k == 1 then
    ok = S[i] <= now - pa[i]
  else
    ok = counterAllows(S[i], now, pa[i], limit[i], cost[i])
  end
  if not ok then
    allowed = false
    break
  end
end

if not allowed then
  local worst, worstWait = 0, 0
  for i = 1, n do
    local k, w = kind[i], 0
    if k == 3 then
      if fresh[i] then
        if cost[i] > limit[i] then w = math.huge end
      elseif S[i][1] + cost[i] > limit[i] then
        -- A lease comes back when a connection closes, not with time: a second is a fair guess.
        w = 1000
      end
    elseif cost[i] > limit[i] then
      w = math.huge
    elseif k == 0 then
      w = bucketWait(S[i], now, pa[i])
    elseif k == 1 then
      w = logWait(S[i], now, pa[i])
    else
      w = counterWait(S[i], now, pa[i], limit[i], cost[i])
    end
    if w > worstWait then
      worst = i
      worstWait = w
    end
  end
  if worst == 0 then return redis.error_reply('wsrl: a refused plan with no wait') end
  if worstWait == math.huge then worstWait = -1 end
  return { 0, worst - 1, worstWait, remaining(worst) }
end

local nonce, inst, lease, leaseTtl = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local maxTtl, near = 0, 0
-- Per tracker hash: field/value pairs to set, fields to delete, and the longest TTL set.
local sets, dels, hmax = {}, {}, {}
for h = 1, H do
  sets[h], dels[h], hmax[h] = {}, {}, 0
end
local function put(i, value, ttl)
  local h = hx[i]
  local s = sets[h]
  s[#s + 1] = field[i]
  s[#s + 1] = value
  if ttl > hmax[h] then hmax[h] = ttl end
end

for i = 1, n do
  local key, k = tierKey[i], kind[i]
  local ttl = 0
  if k == 0 then
    local fullAt = S[i]
    if not (fullAt > now) then fullAt = now end
    fullAt = fullAt + pb[i]
    if near == 0 and (fullAt - now) * 5 > pd[i] then near = i end
    ttl = math.ceil(fullAt - now)
    if ttl > 0 then put(i, struct.pack('<d', fullAt), ttl) else dels[hx[i]][#dels[hx[i]] + 1] = field[i] end
  elseif k == 1 then
    if cost[i] > 0 then
      ttl = math.ceil(pa[i])
      put(i, logWrite(logs[i], full[i], key, limit[i], cost[i], now, pa[i], nonce), ttl)
    end
  elseif k == 2 then
    local w, st = pa[i], S[i]
    local start, p, c = rolled(st[1], st[2], st[3], now, w)
    c = c + cost[i]
    local freshAt = NEG
    if c > 0 then freshAt = start + 2 * w elseif p > 0 then freshAt = start + w end
    ttl = math.ceil(freshAt - now)
    if ttl > 0 then
      put(i, struct.pack('<ddd', start, p, c), ttl)
    else
      dels[hx[i]][#dels[hx[i]] + 1] = field[i]
    end
  else
    local dead = S[i][3]
    if #dead > 0 then hdelAll(key, dead) end
    redis.call('HINCRBY', key, 'l:' .. inst .. '|' .. lease, cost[i])
    local expires = now + leaseTtl
    redis.call('HSET', key, 'i:' .. inst, fmt(expires))
    local latest = S[i][2]
    if expires > latest then latest = expires end
    ttl = math.ceil(latest - now)
    if ttl > ${MAX_TTL_MS} then ttl = ${MAX_TTL_MS} end
    redis.call('PEXPIRE', key, ttl)
  end
  if ttl > maxTtl then maxTtl = ttl end
end

for h = 1, H do
  local key, s = KEYS[h], sets[h]
  -- A hash written before the server had hash-field TTLs keeps its own TTL until it expires.
  if #s > 0 then writeTracker(key, s, hmax[h], hexp[h], now, fieldTtls) end
  if #dels[h] > 0 then
    redis.call('HDEL', key, unpack(dels[h]))
    -- Nothing but the expiry field left: the tracker's state is a fresh one's.
    if redis.call('HLEN', key) == 1 and redis.call('HEXISTS', key, '~e') == 1 then redis.call('DEL', key) end
  end
end
saveClock(clockKey, now, maxTtl)
if near > 0 then return { 1, near - 1 } end
return 1
`;

/**
 * `peek`: the state of every tier of a plan, changing nothing.
 *
 * KEYS and ARGV as for consume (ARGV[3..6] and ARGV[8] are ignored).
 * Reply: {remaining_1, resetIn_1, remaining_2, resetIn_2, ...}, whole units and whole ms;
 * resetIn is the time until the tier's state equals a fresh one (0 for concurrency).
 */
export const PEEK_LUA = `local WRITES = false
${PRELUDE}
local out = {}
for i = 1, n do
  local k, freshAt = kind[i], NEG
  if k == 0 then
    freshAt = S[i]
  elseif k == 1 then
    local _, newest = logLive(logs[i], tierKey[i], now, pa[i])
    if newest > NEG then freshAt = newest + pa[i] end
  elseif k == 2 then
    local st = S[i]
    if st[3] > 0 then freshAt = st[1] + 2 * pa[i] elseif st[2] > 0 then freshAt = st[1] + pa[i] end
  end
  out[#out + 1] = remaining(i)
  if freshAt <= now then out[#out + 1] = 0 else out[#out + 1] = math.ceil(freshAt - now) end
end
return out
`;

/**
 * `forget`: resets tier keys (one tracker's, one slot): deletes each tier key (logs, leases,
 * and keys of layout 1) and its field in the tracker hash.
 *
 * KEYS[1]     the tracker hash; KEYS[2..m+1] the tier keys
 * ARGV[1..m]  each tier key's field in the hash
 * Reply: 1
 */
export const FORGET_LUA = `
local m = #KEYS - 1
redis.call('DEL', unpack(KEYS, 2, m + 1))
-- A tracker hash key holding a value of another type is deleted, never an error.
if type(redis.pcall('HDEL', KEYS[1], unpack(ARGV, 1, m))) == 'table' then redis.call('DEL', KEYS[1]) end
return 1
`;
