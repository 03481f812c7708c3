// Over 400 lines: the Lua text shared by the scripts, one constant (or function) per helper,
// each next to the note that says what it does; the lines are Lua, not TypeScript logic.
/**
 * Lua shared by the Redis store's scripts: the clock, lease-hash reading, and the waits of
 * `lib/algorithms` transcribed (same comparisons, same order, on IEEE doubles). A tracker
 * hash's fields hold their numbers as little-endian doubles (key layout 4: 8 bytes, read and
 * written by `struct`, where text cost `%.17g` to write and `strtod`'s slow path to read); a
 * number a script returns, or keeps outside the tracker hash, is text formatted with `%.17g`
 * (round-trip precision). Tier kinds: 0 token bucket, 1 sliding log, 2 sliding counter,
 * 3 concurrency (`AlgorithmKind`).
 *
 * In parts, so that a script generated for one plan shape (`plan-scripts.ts`) takes only
 * the functions it calls: every `local function` is a closure made on each call.
 */

/** Effects replication on Redis 5 and 6, and `NEG`: what every script starts with. */
export const NEG_LUA = `
local NEG = -math.huge
`;
export const PRELUDE_LUA = `
-- Redis 5 and 6 replicate scripts verbatim unless told otherwise, and refuse writes after
-- TIME; effects replication makes TIME safe (Redis 7 always replicates effects).
if redis.replicate_commands then redis.replicate_commands() end
${NEG_LUA}`;

/**
 * The longest TTL (ms) a script sets on any key or hash field: 2^45 ms, about 1,115 years.
 * A hand-made spec can ask for far more (a bucket refilled once in 3e7 years: a `fullAt`
 * 1e18 ms ahead), which Redis refuses: 7.0 reads a Lua number as `%.17g` text ('1e+18' is
 * not an integer), and Redis 7.4 and 8 refuse a hash-field TTL ending past 2^46 - 1 ms since
 * the epoch (`HFE_MAX_ABS_TIME_MSEC`, in the year 4199). Below both until the year 3085, and
 * an integer that `%.17g` writes without an exponent. Only a key's life is clamped, never a
 * decision (a `retryAfter` is the algorithm's): state more than 1,115 years from fresh is
 * dropped early.
 */
export const MAX_TTL_MS = 2 ** 45;
/** `MAX_TTL_MS` as a Lua literal. */
const MAX_TTL = String(MAX_TTL_MS);

/** `fmt`: a number as text that reads back to the same double (sorted-set scores, replies, the clock). */
const FMT_FN = "function(x) return string.format('%.17g', x) end";
export const FMT_LUA = `
local fmt = ${FMT_FN}
`;

/**
 * `double`: a tracker-hash field holding one number (a bucket's `fullAt`, `~e`), 8 bytes
 * as `struct.pack('<d', x)` wrote them. The generated plan scripts inline the same test
 * (`doubleOf` in `plan-scripts.ts`): a closure made on every call costs more than the read.
 */
export const DOUBLE_LUA = `
-- The number in a field of 8 bytes, else nil: a missing field, or one holding something else
-- (a tier of another kind under the same name, text of layout 3, NaN).
local function double(v)
  if v and #v == 8 then
    local x = struct.unpack('<d', v)
    if x == x then return x end
  end
  return nil
end
`;

/**
 * Statements that set `into` (a Lua variable) to the time the tracker hash `key` (a Lua
 * expression) must live until for what it already holds, read before a write that keeps one
 * TTL per hash into a hash without `~e`: now for a new hash; the end of its TTL for one with
 * a TTL but no `~e`; for one without a TTL whose fields carry their own (written with
 * hash-field TTLs: by a store on Redis 7.4+, while this one has not read the server yet or
 * runs with `hashFieldTtls: false`), the end of its longest-lived field's. The write's own
 * TTL never goes below it: a hash's TTL set to this write's need would cut the fields other
 * plans still need (a sliding log's window), and that write records `~e`, so this runs
 * once per hash (a tracker's first write, or the first of this mode), never on a decision
 * of a tracker with `~e`. Must run before the write (HSET makes a missing hash). Fields
 * with no TTL at all (none of the store's scripts leave one) and a server without HPTTL
 * (before 7.4: no field can have a TTL of its own) put no floor: the hash gets the
 * write's need, as a new one would.
 */
export function hashTtlFloorLua(key: string, into: string): string {
  return `
do
  local left = redis.call('PTTL', ${key})
  if left == -1 then
    left = 0
    local names = redis.call('HKEYS', ${key})
    for j = 1, #names, 500 do
      local ft = redis.pcall('HPTTL', ${key}, 'FIELDS', math.min(500, #names - j + 1), unpack(names, j, math.min(j + 499, #names)))
      if ft.err then break end
      for k = 1, #ft do if ft[k] > left then left = ft[k] end end
    end
  end
  ${into} = now + math.min(left, ${MAX_TTL})
end
`;
}

/**
 * Writes a tracker hash's fields: statements that read `key` (the hash), `s` (its flat
 * name/value list), `ttl` (ms: the longest time until a field written here equals a fresh
 * one's; clamped to `MAX_TTL_MS` here), `exp` (its `~e`, nil when unset), `now` and `mode`
 * (`FieldTtlMode`). The generic scripts call them as `writeTracker` (`HASH_TTL_LUA`); a
 * plan's own script inlines them (`plan-scripts.ts`), as a closure made on every call
 * costs more than the write.
 *
 * With hash-field TTLs (mode 1 or 2) and a hash not written the old way (no `~e`), every
 * field written gets that TTL plus a second: one TTL for all is one call, not one per
 * distinct TTL (a field may outlive its need by as much as the hash's TTL lets it on
 * servers without). Mode 2 sets values and TTL in one HSETEX (Redis 8); mode 1 (Redis 7.4)
 * HSETs, which drops a field's TTL, then HPEXPIREs. Mode 0, or a hash with `~e`: the hash's
 * TTL covers its longest-lived field, kept in `~e` and extended when this write needs it,
 * never shortened, since other plans' fields may need longer. An extension goes a second
 * past the need, so that a tracker deciding often pays a PEXPIRE about once a second, not
 * once per decision.
 *
 * `floor`: statements run in mode 0 when the hash has no `~e` (before its write), which
 * raise `at`, the time the hash's TTL is about to run to, to what the hash already holds
 * needs (`hashTtlFloorLua`); empty where mode 0 never comes.
 */
export function writeTrackerStatements(floor: string): string {
  return `
if ttl > ${MAX_TTL} then ttl = ${MAX_TTL} end
if mode == 2 and exp == nil then
  redis.call('HSETEX', key, 'PX', ttl + 1000, 'FIELDS', #s / 2, unpack(s))
elseif mode == 1 and exp == nil then
  redis.call('HSET', key, unpack(s))
  local names = {}
  for j = 1, #s, 2 do names[#names + 1] = s[j] end
  redis.call('HPEXPIRE', key, ttl + 1000, 'FIELDS', #names, unpack(names))
else
  local at = now + ttl
  local grow = exp == nil or at > exp
  if grow then
    at = at + 1000
    if exp == nil then
${floor}
    end
    s[#s + 1] = '~e'
    s[#s + 1] = struct.pack('<d', at)
  end
  redis.call('HSET', key, unpack(s))
  if grow then redis.call('PEXPIRE', key, math.ceil(at - now)) end
end
`;
}

/** `writeTracker(key, s, ttl, exp, now, mode)`: `writeTrackerStatements` as a function. */
export const HASH_TTL_LUA = `
local function writeTracker(key, s, ttl, exp, now, mode)
${writeTrackerStatements(`local floor
${hashTtlFloorLua('key', 'floor')}
if floor > at then at = floor end`)}
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

-- Records the app time under clockKey for as long as any state written with it lives
-- (at most ${MAX_TTL} ms, as every TTL the scripts set).
local function saveClock(clockKey, now, ttl)
  if clockKey == nil then return end
  local left = redis.call('PTTL', clockKey)
  if left > ttl then ttl = left end
  if ttl > ${MAX_TTL} then ttl = ${MAX_TTL} end
  if ttl > 0 then redis.call('SET', clockKey, fmt(now), 'PX', ttl) end
end
`;

/** `hdelAll`, `instanceOf`, `leaseExpiries`, `leaseFlat`, `leaseUnits`, `readLeases`: the lease hashes of concurrency tiers. */
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

-- The expiry (ms) of each instance in a flat HGETALL reply of a lease hash.
local function leaseExpiries(flat)
  local expiry = {}
  for i = 1, #flat, 2 do
    local f = flat[i]
    if string.sub(f, 1, 2) == 'i:' then expiry[string.sub(f, 3)] = tonumber(flat[i + 1]) end
  end
  return expiry
end

-- A lease hash's fields and values (a flat HGETALL reply); empty when the key holds a value of
-- another type (a key of layout 1, a tier whose algorithm changed), which is deleted when
-- writes is true: dropped, never an error.
local function leaseFlat(key, writes)
  local flat = redis.pcall('HGETALL', key)
  if flat.err then
    if writes then redis.call('DEL', key) end
    return {}
  end
  return flat
end

-- The units a lease field holds: a whole, finite number (what HINCRBY keeps), else nil (a value
-- no script wrote, which HINCRBY would refuse: the field is dropped as a dead one's).
local function leaseUnits(v)
  local units = tonumber(v)
  if units ~= nil and units == math.floor(units) and units - units == 0 then return units end
  return nil
end

-- A lease hash read at now: units held by live instances, the latest live expiry, the
-- fields of dead instances (expiry passed, lease fields with no expiry field, or units that
-- are not a whole number), and the flat HGETALL reply with the expiry of each instance.
local function readLeases(key, now, writes)
  local flat = leaseFlat(key, writes)
  local expiry = leaseExpiries(flat)
  local held, latest, dead = 0, NEG, {}
  for i = 1, #flat, 2 do
    local f = flat[i]
    local inst = instanceOf(f)
    local e = nil
    if inst ~= nil then e = expiry[inst] end
    local units = 0
    if string.sub(f, 1, 2) == 'l:' then units = leaseUnits(flat[i + 1]) end
    if e ~= nil and e > now and units ~= nil then
      if string.sub(f, 1, 2) == 'l:' then
        held = held + units
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

/** `rolled`, `counterState`, `weighted`, `counterAllows`: the sliding counter. */
export const COUNTER_LUA = `
-- Sliding counter (lib/algorithms/sliding-counter.ts).
local function rolled(s, p, c, now, w)
  local start = math.floor(now / w) * w
  if start == s then return start, p, c end
  if start - s == w then return start, c, 0 end
  return start, 0, 0
end

-- A counter field's state {start, prev, curr} (24 bytes: three little-endian doubles); a
-- fresh one's when the field is empty or holds something else (a tier of another kind under
-- the same name).
local function counterState(v)
  if v and #v == 24 then
    local s, p, c = struct.unpack('<ddd', v)
    if s == s and p == p and c == c then return { s, p, c } end
  end
  return { NEG, 0, 0 }
end

local function weighted(start, p, c, now, w)
  if p == 0 then return c end
  return (p * (w - (now - start))) / w + c
end

local function counterAllows(st, now, w, limit, cost)
  local start, p, c = rolled(st[1], st[2], st[3], now, w)
  return weighted(start, p, c, now, w) + cost <= limit
end
`;

/** `counterWait`: a sliding counter's wait (after `COUNTER_LUA`; a plan's own script makes it only on refusal). */
export const COUNTER_WAIT_LUA = `
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

/** Live entries a sliding log keeps in its tracker hash's field before it moves to a sorted set. */
const LOG_FIELD_MAX = 64;

/**
 * `logRead`'s function (a Lua expression). A sliding log's field in the tracker hash holds
 * 'L' and its live timestamps (ms) packed as little-endian doubles, oldest first, at most
 * `LOG_FIELD_MAX` of them; or 'Z' when the log lives in the sorted set at its tier key (one
 * member per event, score = time), where it moves once it has more live entries than that,
 * and stays while the field lives. The scripts write 'L' as the byte 76 of the same
 * `struct.pack` (one string, not two concatenated).
 */
const LOG_READ_FN = `
-- Reads a log at its field value v (and its key, in sorted-set mode): the timestamp that must
-- leave the window before cost more events fit (NEG when they fit whatever the timestamps),
-- whether count + cost > limit, and the entries (a table, oldest first; nil in sorted-set
-- mode). Anything else in the field (a tier of another kind under the same name) reads as
-- an empty log.
function(v, key, limit, cost, writes)
  local ts = nil
  if v ~= 'Z' then
    ts = {}
    if v and #v > 1 and (#v - 1) % 8 == 0 and string.byte(v, 1) == 76 then
      local m = (#v - 1) / 8
      if m == 1 then
        ts[1] = struct.unpack('<d', v, 2)
      else
        ts = { struct.unpack('<' .. string.rep('d', m), v, 2) }
        ts[m + 1] = nil
      end
    end
  end
  -- A log admits whole events: a limit that is not whole (a spec made by hand) admits its
  -- whole part, as in the memory store.
  limit = math.floor(limit)
  local back = limit - cost + 1
  if back < 1 then return NEG, false, ts end
  if ts ~= nil then
    -- The (limit - cost + 1)-th newest entry: it exists exactly when count + cost > limit.
    if #ts >= back then return ts[#ts - back + 1], true, ts end
    return NEG, false, ts
  end
  local r = redis.pcall('ZRANGE', key, -back, -back, 'WITHSCORES')
  if r.err then
    -- Not a sorted set (a key of another layout or tier kind): dropped, never an error.
    if writes then redis.call('DEL', key) end
  elseif r[2] then
    return tonumber(r[2]), true, ts
  end
  return NEG, false, ts
end`;

/** `logWrite`'s function (a Lua expression); it calls `fmt`. */
const LOG_WRITE_FN = `
-- Records cost events at now (after logRead found room): returns the field's new value.
-- Entries that left the window (at or before now - w) are dropped, and only the newest
-- limit entries are kept: no decision can depend on the others (time only moves forward).
function(ts, full, key, limit, cost, now, w, nonce)
  limit = math.floor(limit)
  if ts ~= nil then
    local edge = now - w
    -- One event and nothing live (or an empty log): the field holds just this event.
    if cost == 1 and (#ts == 0 or ts[#ts] <= edge) then return struct.pack('<Bd', 76, now) end
    local keep, m = {}, 0
    for j = 1, #ts do
      if ts[j] > edge then
        m = m + 1
        keep[m] = ts[j]
      end
    end
    local before = m
    for j = 1, cost do
      m = m + 1
      keep[m] = now
    end
    -- Redis's clock stepped back: keep the entries in time order.
    if before > 0 and keep[before] > now then table.sort(keep) end
    local first = 1
    if m > limit then first = m - limit + 1 end
    if m - first + 1 <= ${LOG_FIELD_MAX} then
      return struct.pack('<B' .. string.rep('d', m - first + 1), 76, unpack(keep, first, m))
    end
    -- More live entries than a field holds: the log moves to the sorted set at its key.
    redis.call('DEL', key)
    local args = {}
    for j = first, m do
      args[#args + 1] = fmt(keep[j])
      args[#args + 1] = nonce .. '#' .. j
    end
    for j = 1, #args, 1000 do redis.call('ZADD', key, unpack(args, j, math.min(j + 999, #args))) end
    local ttl = math.ceil(w)
    if ttl > ${MAX_TTL} then ttl = ${MAX_TTL} end
    redis.call('PEXPIRE', key, ttl)
    return 'Z'
  end
  -- The members are added 500 at a time (1,000 arguments), as above: Lua 5.1's unpack
  -- refuses to return much more than 8,000 values, so one ZADD of a cost of 4,000 or more
  -- would raise after the plan's other tiers were written. A member under one of these
  -- names already (a nonce that is Redis's time, and the clock stepped back onto a
  -- microsecond used before) keeps standing for its event, and the events not added get
  -- names of their own (another pass), so that each is counted once.
  local score, args, added, want = fmt(now), {}, 0, cost
  while true do
    local k = 0
    for j = 1, want do
      args[k + 1] = score
      args[k + 2] = nonce .. '#' .. j
      k = k + 2
      if k == 1000 then
        added = added + redis.call('ZADD', key, 'NX', unpack(args, 1, k))
        k = 0
      end
    end
    if k > 0 then added = added + redis.call('ZADD', key, 'NX', unpack(args, 1, k)) end
    if added >= cost then break end
    nonce = nonce .. '+'
    want = cost - added
  end
  -- Only the newest limit entries can ever matter; below that there is nothing to trim.
  if full then redis.call('ZREMRANGEBYRANK', key, 0, -(limit + 1)) end
  -- The newest entries are the ones just added, at now (time does not run backwards).
  local ttl = math.ceil(w)
  if ttl > ${MAX_TTL} then ttl = ${MAX_TTL} end
  redis.call('PEXPIRE', key, ttl)
  return 'Z'
end`;

/**
 * `logRead`, `logWrite`: a sliding log kept in its tracker hash's field (key layout 3 and
 * later) while it holds at most `LOG_FIELD_MAX` live entries, else in a sorted set at its
 * tier key.
 */
export const LOG_FIELD_LUA = `
local logRead = ${LOG_READ_FN}
local logWrite = ${LOG_WRITE_FN}
`;

/**
 * `LOG_FIELD_LUA` made on first need: assigns `logRead` and `logWrite` (and `fmt`, unless
 * set) to locals the script declared, the first time it runs. A plan's own script reads and
 * writes a log held in its field without them (`plan-scripts.ts`), and each closure made on
 * every call costs Redis about 1,000 instructions.
 */
export const LOG_FIELD_LAZY_LUA = `
if logRead == nil then
  if fmt == nil then fmt = ${FMT_FN} end
  logRead = ${LOG_READ_FN}
  logWrite = ${LOG_WRITE_FN}
end
`;

/**
 * `logLive`: a sliding log's live entries and newest one (for a refusal's remaining units and
 * `peek`); apart from `LOG_FIELD_LUA` so that a plan's own script makes it only on refusal.
 */
export const LOG_LIVE_LUA = `
-- A log's entries in the window ending at now, and its newest entry (NEG when empty).
local function logLive(ts, key, now, w)
  if ts ~= nil then
    local live = 0
    for j = 1, #ts do
      if ts[j] > now - w then live = live + 1 end
    end
    return live, ts[#ts] or NEG
  end
  local live = redis.pcall('ZCOUNT', key, '(' .. fmt(now - w), '+inf')
  if type(live) ~= 'number' then live = 0 end
  local newest = redis.pcall('ZRANGE', key, -1, -1, 'WITHSCORES')
  if newest.err or not newest[2] then return live, NEG end
  return live, tonumber(newest[2])
end
`;

/** Every helper, in one text. */
export const HELPERS = [
  PRELUDE_LUA,
  FMT_LUA,
  DOUBLE_LUA,
  HASH_TTL_LUA,
  CLOCK_LUA,
  LEASES_HELPERS_LUA,
  COUNTER_LUA,
  COUNTER_WAIT_LUA,
  BUCKET_WAIT_LUA,
  LOG_WAIT_LUA,
  LOG_FIELD_LUA,
  LOG_LIVE_LUA,
].join('');
