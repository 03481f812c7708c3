/**
 * The Lua scripts of the Redis store. Each is registered once per client with ioredis
 * `defineCommand` (EVALSHA, with EVAL resent transparently after a `NOSCRIPT`); none is ever
 * wrapped in MULTI or sent in a Cluster pipeline.
 *
 * The math is `lib/algorithms` transcribed: the same comparisons, in the same order, on IEEE
 * doubles, so that a plan decides exactly as in the memory store. Numbers travel as strings
 * with round-trip precision both ways: JavaScript's `String(n)` into ARGV, `%.17g` for what
 * a script stores or returns (a Lua number in a reply would be truncated to an integer).
 *
 * Key layout (every key of one plan shares the tracker's `{hash}` tag):
 * - token bucket: a string, `fullAt` (ms);
 * - sliding log: a sorted set, one member per admitted event (score = time in ms, member =
 *   a per-call nonce, unique across instances), trimmed to the newest `limit` entries and
 *   to the window;
 * - sliding counter: a string `"<start> <prev> <curr>"`;
 * - concurrency: a hash; `i:<instance>` holds the time (ms) until which that store instance
 *   is alive, `l:<instance>|<lease>` the units that lease holds. A lease counts only while
 *   its instance's time lies ahead, so a dead instance's slots lapse by themselves;
 * - clock (only with `clock: 'app'`): a string, the latest app time seen for the tag, so
 *   that time never runs backwards inside a script.
 * Every write sets a TTL (ms) equal to the time until the key's state equals a fresh key's.
 */

/**
 * Shared helpers. Tier kinds: 0 token bucket, 1 sliding log, 2 sliding counter,
 * 3 concurrency (`AlgorithmKind`).
 */
const HELPERS = `
-- Redis 5 and 6 replicate scripts verbatim unless told otherwise, and refuse writes after
-- TIME; effects replication makes TIME safe (Redis 7 always replicates effects).
if redis.replicate_commands then redis.replicate_commands() end

local NEG = -math.huge
local function fmt(x) return string.format('%.17g', x) end

-- The time in ms: Redis's own clock when arg is '', else the app's time, clamped to the
-- latest time already seen under clockKey so that it never runs backwards.
local function readClock(arg, clockKey)
  if arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  end
  local now = tonumber(arg)
  local last = tonumber(redis.call('GET', clockKey))
  if last ~= nil and last > now then return last end
  return now
end

-- Records the app time under clockKey for as long as any state written with it lives.
local function saveClock(clockKey, now, ttl)
  if clockKey == nil then return end
  local left = redis.call('PTTL', clockKey)
  if left > ttl then ttl = left end
  if ttl > 0 then redis.call('SET', clockKey, fmt(now), 'PX', ttl) end
end

local function hdelAll(key, fields)
  for i = 1, #fields, 500 do
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 499, #fields)))
  end
end

-- The instance a lease-hash field belongs to ('i:<inst>' or 'l:<inst>|<lease>').
local function instanceOf(field)
  if string.sub(field, 1, 2) == 'i:' then return string.sub(field, 3) end
  return string.match(field, '^l:([^|]*)|')
end

-- A lease hash read at now: units held by live instances, the latest live expiry, the
-- fields of dead instances (expiry passed, or lease fields with no expiry field), and the
-- flat HGETALL reply with the expiry of each instance.
-- The expiry (ms) of each instance in a flat HGETALL reply of a lease hash.
local function leaseExpiries(flat)
  local expiry = {}
  for i = 1, #flat, 2 do
    local f = flat[i]
    if string.sub(f, 1, 2) == 'i:' then expiry[string.sub(f, 3)] = tonumber(flat[i + 1]) end
  end
  return expiry
end

local function readLeases(key, now)
  local flat = redis.call('HGETALL', key)
  local expiry = leaseExpiries(flat)
  local held, latest, dead = 0, NEG, {}
  for i = 1, #flat, 2 do
    local f = flat[i]
    local inst = instanceOf(f)
    local e = nil
    if inst ~= nil then e = expiry[inst] end
    if e ~= nil and e > now then
      if string.sub(f, 1, 2) == 'l:' then
        held = held + tonumber(flat[i + 1])
      elseif e > latest then
        latest = e
      end
    else
      dead[#dead + 1] = f
    end
  end
  return held, latest, dead, flat, expiry
end

-- Sliding counter (lib/algorithms/sliding-counter.ts).
local function rolled(s, p, c, now, w)
  local start = math.floor(now / w) * w
  if start == s then return start, p, c end
  if start - s == w then return start, c, 0 end
  return start, 0, 0
end

local function weighted(start, p, c, now, w)
  if p == 0 then return c end
  return (p * (w - (now - start))) / w + c
end

local function counterAllows(st, now, w, limit, cost)
  local start, p, c = rolled(st[1], st[2], st[3], now, w)
  return weighted(start, p, c, now, w) + cost <= limit
end

local function counterWait(st, now, w, limit, cost)
  if counterAllows(st, now, w, limit, cost) then return 0 end
  local start, p, c = rolled(st[1], st[2], st[3], now, w)
  local at
  if c + cost <= limit and p > 0 then
    at = start + w * (1 - (limit - c - cost) / p)
  else
    local decay = 0
    if c > 0 then decay = w * (1 - (limit - cost) / c) end
    if decay > 0 then at = start + w + decay else at = start + w + 0 end
  end
  local wait = math.ceil(at - now)
  if wait < 1 then wait = 1 end
  local step = 0
  while not counterAllows(st, now + wait, w, limit, cost) do
    if step == 8 then return math.max(1, math.ceil(start + 2 * w - now) + 1) end
    wait = wait + 1
    step = step + 1
  end
  return wait
end

-- Token bucket (lib/algorithms/token-bucket.ts).
local function bucketWait(fullAt, now, slack)
  if fullAt - now <= slack then return 0 end
  local wait = math.ceil(fullAt - now - slack)
  if wait < 1 then wait = 1 end
  while fullAt - (now + wait) > slack do wait = wait + 1 end
  return wait
end

-- Sliding log (lib/algorithms/sliding-log.ts).
local function logWait(oldest, now, w)
  if oldest <= now - w then return 0 end
  local wait = math.ceil(oldest + w - now)
  if wait < 1 then wait = 1 end
  while oldest > now + wait - w do wait = wait + 1 end
  return wait
end
`;

/** The plan's figures from ARGV, and the state of every tier read once (consume and peek). */
const PRELUDE = `${HELPERS}
-- The plan: tier i's figures at ARGV[7i..7i+6] = kind, limit, cost, a, b, c, d.
local n = tonumber(ARGV[2])
local clockKey = nil
if ARGV[1] ~= '' then clockKey = KEYS[n + 1] end
local now = readClock(ARGV[1], clockKey)
local kind, limit, cost, pa, pb, pc, pd = {}, {}, {}, {}, {}, {}, {}
for i = 1, n do
  local o = 7 * i - 1
  kind[i] = tonumber(ARGV[o + 1])
  limit[i] = tonumber(ARGV[o + 2])
  cost[i] = tonumber(ARGV[o + 3])
  pa[i] = tonumber(ARGV[o + 4])
  pb[i] = tonumber(ARGV[o + 5])
  pc[i] = tonumber(ARGV[o + 6])
  pd[i] = tonumber(ARGV[o + 7])
end

-- The state of every tier, read once. Bucket: fullAt. Log: the timestamp that must leave
-- the window before the cost fits (NEG when it fits whatever the timestamps). Counter:
-- {start, prev, curr}. Concurrency: {held, latest expiry, dead fields}.
-- fresh[i]: the key does not exist (its state is a fresh one's).
local S, fresh, count = {}, {}, {}
for i = 1, n do
  local key, k = KEYS[i], kind[i]
  if k == 0 then
    S[i] = tonumber(redis.call('GET', key))
    fresh[i] = S[i] == nil
    if fresh[i] then S[i] = NEG end
  elseif k == 1 then
    count[i] = redis.call('ZCARD', key)
    local over = count[i] + cost[i] - limit[i]
    fresh[i] = count[i] == 0
    S[i] = NEG
    if over > 0 and not fresh[i] then
      S[i] = tonumber(redis.call('ZRANGE', key, over - 1, over - 1, 'WITHSCORES')[2])
    end
  elseif k == 2 then
    local v = redis.call('GET', key)
    fresh[i] = not v
    if v then
      local s, p, c = string.match(v, '^(%S+) (%S+) (%S+)$')
      S[i] = { tonumber(s), tonumber(p), tonumber(c) }
    else
      S[i] = { NEG, 0, 0 }
    end
  else
    local held, latest, dead, flat = readLeases(key, now)
    S[i] = { held, latest, dead }
    fresh[i] = #flat == 0
  end
end

-- Whole units a tier has left at now.
local function remaining(i)
  local k = kind[i]
  if k == 0 then
    local fullAt = S[i]
    if fullAt <= now then return limit[i] end
    local tokens = limit[i] - (fullAt - now) / pc[i]
    if tokens > 0 then return math.floor(tokens) end
    return 0
  elseif k == 1 then
    local live = redis.call('ZCOUNT', KEYS[i], '(' .. fmt(now - pa[i]), '+inf')
    return math.max(0, limit[i] - live)
  elseif k == 2 then
    local st = S[i]
    local start, p, c = rolled(st[1], st[2], st[3], now, pa[i])
    return math.max(0, math.floor(limit[i] - weighted(start, p, c, now, pa[i])))
  end
  return math.max(0, limit[i] - S[i][1])
end
`;

/**
 * `consume`: decides a plan atomically; commits every tier only if every tier allows.
 *
 * KEYS[1..n]  the tiers' keys, in plan order; KEYS[n+1] the clock key (app clock only)
 * ARGV[1]     the app time in ms, or '' to read Redis `TIME`
 * ARGV[2]     n, the number of tiers
 * ARGV[3]     nonce, unique per call (sliding-log members)
 * ARGV[4]     the store instance's id (concurrency)
 * ARGV[5]     the lease name (concurrency)
 * ARGV[6]     lease TTL in ms (concurrency)
 * ARGV[7i..7i+6]  tier i (from 1): kind, limit, cost, a, b, c, d, where a, b, c, d are
 *             token bucket: slack, span, intervalMs, nearBound; sliding log and counter:
 *             windowMs; concurrency: nothing
 *
 * Reply: 1 when allowed; {1, index} when allowed and that token bucket (the first in plan
 * order, 0-based) is left with less than a fifth of its capacity (`5 * (fullAt - now) >
 * nearBound`); else {0, index of the deciding tier (0-based), retryAfter in whole ms (>= 1),
 * that tier's remaining units}, where retryAfter -1 stands for never (a cost above the
 * limit). The deciding tier is the one with the longest wait; ties go to the earliest tier.
 */
export const CONSUME_LUA = `${PRELUDE}
local allowed = true
for i = 1, n do
  local k = kind[i]
  local ok
  if fresh[i] then
    -- A fresh tier admits any cost up to its limit, and nothing above it.
    ok = cost[i] <= limit[i]
  elseif k == 0 then
    ok = S[i] - now <= pa[i]
  elseif k == 1 then
    ok = S[i] <= now - pa[i]
  elseif k == 2 then
    ok = counterAllows(S[i], now, pa[i], limit[i], cost[i])
  else
    ok = S[i][1] + cost[i] <= limit[i]
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
    if fresh[i] then
      -- A cost above the limit never fits.
      if cost[i] > limit[i] then w = math.huge end
    elseif k == 0 then
      w = bucketWait(S[i], now, pa[i])
    elseif k == 1 then
      w = logWait(S[i], now, pa[i])
    elseif k == 2 then
      w = counterWait(S[i], now, pa[i], limit[i], cost[i])
    elseif S[i][1] + cost[i] > limit[i] then
      -- A lease comes back when a connection closes, not with time: a second is a fair guess.
      w = 1000
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
for i = 1, n do
  local key, k = KEYS[i], kind[i]
  local ttl = 0
  if k == 0 then
    local fullAt = S[i]
    if not (fullAt > now) then fullAt = now end
    fullAt = fullAt + pb[i]
    if near == 0 and (fullAt - now) * 5 > pd[i] then near = i end
    ttl = math.ceil(fullAt - now)
    if ttl > 0 then redis.call('SET', key, fmt(fullAt), 'PX', ttl) else redis.call('DEL', key) end
  elseif k == 1 then
    local w = pa[i]
    if cost[i] > 0 then
      local args = {}
      for j = 1, cost[i] do
        args[#args + 1] = fmt(now)
        args[#args + 1] = nonce .. '#' .. j
      end
      redis.call('ZADD', key, unpack(args))
      -- Only the newest limit entries can ever matter; below that there is nothing to trim.
      if count[i] + cost[i] > limit[i] then redis.call('ZREMRANGEBYRANK', key, 0, -(limit[i] + 1)) end
    end
    if fresh[i] then
      -- The key held nothing: the entries just added, at now, are its newest.
      if cost[i] > 0 then ttl = math.ceil(w) end
    else
      -- Entries at least a window old never count again (time does not run backwards).
      redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now - w))
      local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      if newest[2] then ttl = math.ceil(tonumber(newest[2]) + w - now) end
    end
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) elseif not fresh[i] then redis.call('DEL', key) end
  elseif k == 2 then
    local w, st = pa[i], S[i]
    local start, p, c = rolled(st[1], st[2], st[3], now, w)
    c = c + cost[i]
    local freshAt = NEG
    if c > 0 then freshAt = start + 2 * w elseif p > 0 then freshAt = start + w end
    ttl = math.ceil(freshAt - now)
    if ttl > 0 then
      redis.call('SET', key, fmt(start) .. ' ' .. fmt(p) .. ' ' .. fmt(c), 'PX', ttl)
    else
      redis.call('DEL', key)
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
    redis.call('PEXPIRE', key, ttl)
  end
  if ttl > maxTtl then maxTtl = ttl end
end
saveClock(clockKey, now, maxTtl)
if near > 0 then return { 1, near - 1 } end
return 1
`;

/**
 * `peek`: the state of every tier of a plan, changing nothing.
 *
 * KEYS and ARGV as for consume (ARGV[3..6] are ignored).
 * Reply: {remaining_1, resetIn_1, remaining_2, resetIn_2, ...}, whole units and whole ms;
 * resetIn is the time until the tier's state equals a fresh one (0 for concurrency).
 */
export const PEEK_LUA = `${PRELUDE}
local out = {}
for i = 1, n do
  local k, freshAt = kind[i], NEG
  if k == 0 then
    freshAt = S[i]
  elseif k == 1 then
    local newest = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
    if newest[2] then freshAt = tonumber(newest[2]) + pa[i] end
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
 * `release`: gives back the units a lease holds on each concurrency key of a plan; drops the
 * instance's expiry field once it holds nothing more on a key.
 *
 * KEYS[1..m]  the plan's concurrency keys
 * ARGV[1]     the store instance's id
 * ARGV[2]     the lease name
 * ARGV[2+j]   the cost to give back on KEYS[j]
 * Reply: 1
 */
export const RELEASE_LUA = `
local inst, lease = ARGV[1], ARGV[2]
local field = 'l:' .. inst .. '|' .. lease
local prefix = 'l:' .. inst .. '|'
for j = 1, #KEYS do
  local key = KEYS[j]
  local units = tonumber(redis.call('HGET', key, field))
  if units ~= nil then
    units = units - tonumber(ARGV[2 + j])
    if units > 0 then redis.call('HSET', key, field, units) else redis.call('HDEL', key, field) end
  end
  local mine = false
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if string.sub(f, 1, #prefix) == prefix then
      mine = true
      break
    end
  end
  if not mine then redis.call('HDEL', key, 'i:' .. inst) end
end
return 1
`;

/**
 * `leases`: keeps a store instance's leases on one concurrency key alive and in line with
 * what the instance knows it holds. Run every third of the lease TTL for each key the
 * instance holds leases on, and with an empty list when the store closes.
 *
 * KEYS[1]  the lease hash; KEYS[2] the clock key (app clock only)
 * ARGV[1]  the app time in ms, or '' to read Redis `TIME`
 * ARGV[2]  the store instance's id
 * ARGV[3]  lease TTL in ms
 * ARGV[4]  'sync': this instance's leases become exactly the pairs that follow;
 *          'touch': its live leases are kept as they are (a consume is still in flight)
 * ARGV[5..] lease, units, lease, units, ... (sync)
 * Reply: the units this instance holds on the key afterwards.
 *
 * Fields of dead instances are removed on the way.
 */
export const LEASES_LUA = `${HELPERS}
local key = KEYS[1]
local clockKey = nil
if ARGV[1] ~= '' then clockKey = KEYS[2] end
local now = readClock(ARGV[1], clockKey)
local inst, ttl, mode = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local prefix = 'l:' .. inst .. '|'

local want = {}
if mode == 'sync' then
  for j = 5, #ARGV, 2 do want[prefix .. ARGV[j]] = tonumber(ARGV[j + 1]) end
end

local flat = redis.call('HGETALL', key)
local expiry = leaseExpiries(flat)
local drop, latest, mine = {}, NEG, 0
for i = 1, #flat, 2 do
  local f = flat[i]
  local other = instanceOf(f)
  local e = nil
  if other ~= nil then e = expiry[other] end
  if other == inst then
    if string.sub(f, 1, 2) == 'l:' then
      if mode == 'sync' then
        if want[f] == nil then drop[#drop + 1] = f end
      elseif e ~= nil and e > now then
        mine = mine + tonumber(flat[i + 1])
      else
        drop[#drop + 1] = f
      end
    end
  elseif e ~= nil and e > now then
    if string.sub(f, 1, 2) == 'i:' and e > latest then latest = e end
  else
    drop[#drop + 1] = f
  end
end
if #drop > 0 then hdelAll(key, drop) end
if mode == 'sync' then
  for f, units in pairs(want) do
    redis.call('HSET', key, f, units)
    mine = mine + units
  end
end
if mine > 0 then
  local expires = now + ttl
  redis.call('HSET', key, 'i:' .. inst, fmt(expires))
  if expires > latest then latest = expires end
else
  redis.call('HDEL', key, 'i:' .. inst)
end
if latest > now and redis.call('EXISTS', key) == 1 then
  local left = math.ceil(latest - now)
  redis.call('PEXPIRE', key, left)
  saveClock(clockKey, now, left)
end
return mine
`;

/**
 * `blocks`: records or lifts an operator's block in the shared hash of blocks, drops the
 * entries that have run out, and keeps the hash alive exactly as long as its latest block.
 *
 * KEYS[1]  the hash of blocks: name -> until (ms since the epoch)
 * ARGV[1]  'set' or 'delete'
 * ARGV[2]  the blocked name
 * ARGV[3]  until, ms since the epoch ('set')
 * ARGV[4]  the caller's wall-clock time, ms since the epoch (blocks are wall-clock times, so
 *          that instances agree on them)
 * Reply: 1
 */
export const BLOCKS_LUA = `
local key, now = KEYS[1], tonumber(ARGV[4])
if ARGV[1] == 'set' then
  redis.call('HSET', key, ARGV[2], ARGV[3])
else
  redis.call('HDEL', key, ARGV[2])
end
local flat = redis.call('HGETALL', key)
local latest, gone = now, {}
for i = 1, #flat, 2 do
  local untilAt = tonumber(flat[i + 1])
  if untilAt == nil or untilAt <= now then
    gone[#gone + 1] = flat[i]
  elseif untilAt > latest then
    latest = untilAt
  end
end
for i = 1, #gone, 500 do
  redis.call('HDEL', key, unpack(gone, i, math.min(i + 499, #gone)))
end
if latest > now and redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, math.ceil(latest - now)) end
return 1
`;
