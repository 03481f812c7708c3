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
 * Key layout, version 4 (`KEY_LAYOUT_VERSION`; every key of one tracker shares its
 * `{hash}` tag, so one Cluster slot):
 * - the tracker hash `<prefix>{hash}:~4`: one field per token bucket, sliding counter and
 *   sliding log of the tracker, named by the tier key's text after the tag (`:g`,
 *   `:t:chat`, `:x`). Numbers are little-endian doubles (`struct.pack('<d')`): a bucket's
 *   field holds `fullAt` (ms, 8 bytes), a counter's start, prev and curr (24 bytes), a
 *   log's `L` and its live timestamps (ms, oldest first). Field `~e` holds the time (ms, the
 *   scripts' clock, 8 bytes) the hash's own
 *   TTL runs to, so that a decision extends the TTL only when it must (one PEXPIRE at most)
 *   and never shortens it for another tier; an extension reaches a second past the need, so
 *   that a busy tracker pays one PEXPIRE a second rather than one per decision.
 *   On Redis 7.4 and later each field carries its own TTL instead, and `~e` is not written:
 *   the fields one decision writes get one TTL, the longest they need plus a second (HSETEX
 *   on Redis 8, HPEXPIRE after the HSET on 7.4);
 * - a sliding log with more than 64 live entries (entries inside its window) moves to a
 *   sorted set at its tier key, one member per admitted event (score = time in ms, member =
 *   a per-call nonce, unique across instances), trimmed to the newest `limit` entries; its
 *   field then holds `Z` for as long as the field lives. A field holds at most 64 entries so
 *   that no decision rewrites more than 513 bytes for a log; a log stays exact only with every
 *   event in its window kept;
 * - concurrency: a hash at the tier key; `i:<instance>` holds the time (ms) until which that
 *   store instance is alive, `l:<instance>|<lease>` the units that lease holds. A lease
 *   counts only while its instance's time lies ahead, so a dead instance's slots lapse;
 * - clock (only with `clock: 'app'`): a string, the latest app time seen for the tag, so
 *   that time never runs backwards inside a script.
 * Every write sets a TTL (ms) equal to the time until the state equals a fresh one's (the
 * tracker hash, or the fields one decision writes on servers with hash-field TTLs: the
 * longest of theirs, plus a second), at most `MAX_TTL_MS` (2^45 ms, about 1,115 years).
 *
 * Layout 1 kept each bucket and counter in a string at its tier key, layout 2 each log in a
 * sorted set at its tier key and the buckets and counters in the hash `...}:~2`, layout 3
 * kept the same fields as layout 4 in the hash `...}:~3` with buckets and counters as
 * `%.17g` text (which cost about 12 % of Redis's time per decision to write and read
 * back). Layout 4 never reads any of them (their keys expire by their own TTLs: a
 * tracker's buckets, counters and logs start fresh once after the upgrade), and a log or
 * lease key holding a value of another type is dropped, not an error.
 */

import { HELPERS, MAX_TTL_MS } from './lua-helpers.js';
export { CONSUME_LUA, FORGET_LUA, PEEK_LUA } from './decision-scripts.js';

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
  local held = redis.pcall('HGET', key, field)
  -- A key of another type holds no lease: deleted, never an error.
  if type(held) == 'table' then redis.call('DEL', key) end
  local units = tonumber(held)
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

local flat = leaseFlat(key, true)
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
      elseif e ~= nil and e > now and leaseUnits(flat[i + 1]) ~= nil then
        mine = mine + leaseUnits(flat[i + 1])
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
  if left > ${MAX_TTL_MS} then left = ${MAX_TTL_MS} end
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
 * ARGV[4]  '' to clean up by Redis's clock (`TIME`), or, with `clock: 'app'`, the caller's
 *          wall-clock time, ms since the epoch (one instance's clock running ahead must not
 *          clean up blocks the others still enforce)
 * Reply: 1
 */
export const BLOCKS_LUA = `
local key, now = KEYS[1], tonumber(ARGV[4])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
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
if latest > now and redis.call('EXISTS', key) == 1 then
  redis.call('PEXPIRE', key, math.min(math.ceil(latest - now), ${MAX_TTL_MS}))
end
return 1
`;
