/**
 * Lua shared by the Redis store's scripts: the clock, lease-hash reading, and the waits of
 * `lib/algorithms` transcribed (same comparisons, same order, on IEEE doubles). Numbers a
 * script stores or returns are formatted with `%.17g` (round-trip precision). Tier kinds:
 * 0 token bucket, 1 sliding log, 2 sliding counter, 3 concurrency (`AlgorithmKind`).
 *
 * In parts, so that a script generated for one plan shape (`plan-scripts.ts`) takes only
 * the functions it calls: every `local function` is a closure made on each call.
 */

/** Effects replication on Redis 5 and 6, `NEG` and `fmt`: what every script starts with. */
export const PRELUDE_LUA = `
-- Redis 5 and 6 replicate scripts verbatim unless told otherwise, and refuse writes after
-- TIME; effects replication makes TIME safe (Redis 7 always replicates effects).
if redis.replicate_commands then redis.replicate_commands() end

local NEG = -math.huge
local function fmt(x) return string.format('%.17g', x) end
`;

/** `writeHashTtl`: a tracker hash written on a server without hash-field TTLs. */
export const HASH_TTL_LUA = `
-- Writes a tracker hash's fields (flat name/value list s) on a server without hash-field
-- TTLs: the hash's TTL covers its longest-lived field, kept in field ~e (exp, nil when
-- unset) and extended when this write needs it, never shortened, since other plans' fields
-- may need longer. An extension goes a second past the need (at), so that a tracker deciding
-- often pays a PEXPIRE about once a second, not once per decision.
local function writeHashTtl(key, s, at, exp, now)
  local grow = exp == nil or at > exp
  if grow then
    at = at + 1000
    s[#s + 1] = '~e'
    s[#s + 1] = fmt(at)
  end
  redis.call('HSET', key, unpack(s))
  if grow then redis.call('PEXPIRE', key, math.ceil(at - now)) end
end
`;

/** `readClock` and `saveClock`: Redis `TIME`, or the app's time clamped to the latest seen. */
export const CLOCK_LUA = `
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
`;

/** `hdelAll`, `instanceOf`, `leaseExpiries`, `readLeases`: the lease hashes of concurrency tiers. */
export const LEASES_HELPERS_LUA = `
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
`;

/** `rolled`, `weighted`, `counterAllows`, `counterWait`: the sliding counter. */
export const COUNTER_LUA = `
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
`;

/** `bucketWait`: a token bucket's wait. */
export const BUCKET_WAIT_LUA = `
-- Token bucket (lib/algorithms/token-bucket.ts).
local function bucketWait(fullAt, now, slack)
  if fullAt - now <= slack then return 0 end
  local wait = math.ceil(fullAt - now - slack)
  if wait < 1 then wait = 1 end
  while fullAt - (now + wait) > slack do wait = wait + 1 end
  return wait
end
`;

/** `logWait`: a sliding log's wait. */
export const LOG_WAIT_LUA = `
-- Sliding log (lib/algorithms/sliding-log.ts).
local function logWait(oldest, now, w)
  if oldest <= now - w then return 0 end
  local wait = math.ceil(oldest + w - now)
  if wait < 1 then wait = 1 end
  while oldest > now + wait - w do wait = wait + 1 end
  return wait
end
`;

/** Every helper, in one text. */
export const HELPERS = [
  PRELUDE_LUA,
  HASH_TTL_LUA,
  CLOCK_LUA,
  LEASES_HELPERS_LUA,
  COUNTER_LUA,
  BUCKET_WAIT_LUA,
  LOG_WAIT_LUA,
].join('');
