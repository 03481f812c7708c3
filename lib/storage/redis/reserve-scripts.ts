/**
 * The token-reservation scripts of the Redis store (option `reservations`, key layout 4):
 * `reserve` takes a run of a plan's token-bucket slots in one call, `unreserve` gives back
 * the unspent tail of a run. Only plans made of token buckets alone use them.
 *
 * A bucket at `fullAt` (GCRA's theoretical arrival time) admits a cost at `now` when
 * `fullAt - now <= slack`, and moves `fullAt` to `max(fullAt, now) + span`. Reserving g
 * decisions at once is g such consumes in a row: the j-th (from 0) gets the slot that
 * starts at `start_j = base + j * span` (`base = max(fullAt, now)`, the additions done one
 * by one as g consumes would). A reserved slot may be spent only while `now <= start_j` on
 * the scripts' clock: then every admitted decision at time t holds a slot starting in
 * `[t, t + slack]`, slots never overlap, and a bucket of capacity C and rate r admits at
 * most C + r * T in any interval T, exactly as without reservations. A slot whose start has
 * passed lapses (its token is lost to this instance, never spent late).
 */
import { HELPERS, MAX_TTL_MS } from './lua-helpers.js';

/**
 * `reserve`: takes up to `ask` slots of every bucket of a plan (the same number of each),
 * or refuses as `consume` would when not even one fits.
 *
 * KEYS[1..H]  the tracker hashes of the plan's buckets; KEYS[H+1] the clock key (app clock
 *             only). The tiers' own keys are not named: a bucket is a field of its hash (and
 *             on a Cluster slot being migrated, a call naming a missing key gets TRYAGAIN).
 * ARGV[1]     the app time in ms, or '' to read Redis `TIME`
 * ARGV[2]     n, the number of tiers (all token buckets)
 * ARGV[3]     H, the number of tracker hashes
 * ARGV[4]     the field-TTL mode (`FieldTtlMode`): '0' none, '1' HPEXPIRE (Redis 7.4), '2' HSETEX (8.0+)
 * ARGV[5]     ask, the slots wanted (>= 1)
 * ARGV[6]     ttl in ms: a slot after the first is granted only if it starts within ttl
 *             of the first (of `base`, in each bucket): a call takes at most ttl of each
 *             bucket's refill, wherever the bucket stands (full, or spending its burst with
 *             `fullAt` ahead of now)
 * ARGV[7]     the owner tag (the store instance's id)
 * ARGV[8]     moreCap: the most slots still free after the grant to report
 * ARGV[9+7(i-1)..]  tier i: limit, cost, slack, span, intervalMs, hash index, field
 *
 * Each bucket's field `~o<field>` holds `<owner>|` and the bucket's field as its last
 * reserver wrote it (`fullAt`, 8 bytes), or as that reserver's give-back (`unreserve`) left
 * it: the bucket was left to one instance when it still holds that instance's `fullAt`.
 *
 * Reply: {2, g, now, alone (1|0), more, base_1..base_n, end_1..end_n} when g >= 1 slots were
 * taken, where base_i is the first slot's start in bucket i and end_i its new `fullAt`
 * (numbers as `%.17g` strings), alone says every bucket was either full or last written by
 * this owner's reservation, and more is how many further slots would still have fitted
 * (at most moreCap, ignoring ttl; from the arithmetic, not counted one by one); otherwise
 * consume's refusal {0, index, retryAfter, remaining}.
 */
export const RESERVE_LUA = `${HELPERS}
local n, H = tonumber(ARGV[2]), tonumber(ARGV[3])
local fieldTtls = tonumber(ARGV[4])
local ask, ttl, owner, moreCap = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local clockKey = nil
if ARGV[1] ~= '' then clockKey = KEYS[H + 1] end
local now = readClock(ARGV[1], clockKey)
local limit, cost, slack, span, interval, hx, field = {}, {}, {}, {}, {}, {}, {}
for i = 1, n do
  local o = 8 + 7 * (i - 1)
  limit[i] = tonumber(ARGV[o + 1])
  cost[i] = tonumber(ARGV[o + 2])
  slack[i] = tonumber(ARGV[o + 3])
  span[i] = tonumber(ARGV[o + 4])
  interval[i] = tonumber(ARGV[o + 5])
  hx[i] = tonumber(ARGV[o + 6])
  field[i] = ARGV[o + 7]
end

local raw, own, hexp = {}, {}, {}
for h = 1, H do
  local names, at = { '~e' }, {}
  for i = 1, n do
    if hx[i] == h then
      names[#names + 1] = field[i]
      names[#names + 1] = '~o' .. field[i]
      at[#at + 1] = i
    end
  end
  -- A key of another type reads as an empty hash and is deleted: dropped, never an error.
  local vals = redis.pcall('HMGET', KEYS[h], unpack(names))
  if vals.err then
    redis.call('DEL', KEYS[h])
    vals = {}
  end
  hexp[h] = double(vals[1])
  for j = 1, #at do
    raw[at[j]] = vals[2 * j]
    own[at[j]] = vals[2 * j + 1]
  end
end

-- Per bucket: how many slots fit (up to ask) and start within ttl of the first.
local S, g, alone = {}, ask, true
for i = 1, n do
  local fullAt = double(raw[i]) or NEG
  S[i] = fullAt
  if fullAt > now and own[i] ~= owner .. '|' .. raw[i] then alone = false end
  local base = fullAt
  if not (base > now) then base = now end
  local t, c = base, 0
  if cost[i] <= limit[i] then
    while c < g and t - now <= slack[i] and t - base <= ttl do
      t = t + span[i]
      c = c + 1
    end
  end
  if c < g then g = c end
end

if g < 1 then
  local worst, worstWait = 0, 0
  for i = 1, n do
    local w
    if cost[i] > limit[i] then w = math.huge else w = bucketWait(S[i], now, slack[i]) end
    if w > worstWait then
      worst = i
      worstWait = w
    end
  end
  -- Slot 0 is within ttl of itself: a bucket with no slot has none within slack.
  if worst == 0 then return redis.error_reply('wsrl: a refused reservation with no wait') end
  local left = 0
  local fullAt = S[worst]
  if fullAt <= now then left = limit[worst] else left = math.max(0, math.floor(limit[worst] - (fullAt - now) / interval[worst])) end
  if worstWait == math.huge then worstWait = -1 end
  return { 0, worst - 1, worstWait, left }
end

-- Slots still free after the grant (for the sizing only: not the exact sequential count).
local more = moreCap
local out = { 2, g, fmt(now), alone and 1 or 0, 0 }
local sets, hmax, maxTtl, ends = {}, {}, 0, {}
for h = 1, H do sets[h], hmax[h] = {}, 0 end
for i = 1, n do
  local base = S[i]
  if not (base > now) then base = now end
  local t = base
  for _ = 1, g do t = t + span[i] end
  out[5 + i] = fmt(base)
  ends[i] = t
  local free = 0
  if t - now <= slack[i] then free = math.floor((slack[i] - (t - now)) / span[i]) + 1 end
  if free < more then more = free end
  local ttlI = math.ceil(t - now)
  local s = sets[hx[i]]
  local packed = struct.pack('<d', t)
  s[#s + 1] = field[i]
  s[#s + 1] = packed
  s[#s + 1] = '~o' .. field[i]
  s[#s + 1] = owner .. '|' .. packed
  if ttlI > hmax[hx[i]] then hmax[hx[i]] = ttlI end
  if ttlI > maxTtl then maxTtl = ttlI end
end
for i = 1, n do out[5 + n + i] = fmt(ends[i]) end
out[5] = more

for h = 1, H do writeTracker(KEYS[h], sets[h], hmax[h], hexp[h], now, fieldTtls) end
saveClock(clockKey, now, maxTtl)
return out
`;

/**
 * `unreserve`: gives back the unspent tail of a reservation when every bucket of the plan is
 * still at the end the reservation left it at (no one reserved or consumed after it), else
 * nothing: the tail stays taken, its instance may still spend it, and it lapses as time
 * passes its slots (a tail given back in some buckets only could be spent in none). A
 * bucket whose field is gone was reset (or its data lost, or it expired full, when every
 * slot has lapsed): the tail is of a bucket that no longer counts it, and is not spent.
 *
 * KEYS[1..H]  the tracker hashes
 * ARGV[1]     n; ARGV[2] the field-TTL mode (not read: see the script); ARGV[3] the app time or ''
 * ARGV[4]     '1' for an idle batch's give-back (the sweep's): the owner's mark follows it, so
 *             the instance's next batch still counts as alone; '0' (a batch that ended with
 *             a slower bucket's slots ahead, or one that came when both places were taken,
 *             or at close): the mark goes, and the next batch starts at 1 (a plan whose fast
 *             bucket's slots lapse within milliseconds would otherwise keep reserving the
 *             slow bucket's slots ahead of what it spends)
 * ARGV[5+6(i-1)..]  tier i: hash index, field, end and base (as reserve returned them),
 *             k, the slots before the first one given back, and span: the bucket goes back
 *             to base plus k spans, added one by one as reserve did
 * Reply: the number of buckets given back (n, or 0), or -1 when a bucket's field is gone.
 */
export const UNRESERVE_LUA = `${HELPERS}
-- ARGV[2], the field-TTL mode, is not read: a hash without \`~e\` keeps TTLs per field (it was
-- written with them), whatever this store's mode.
local n = tonumber(ARGV[1])
local now
if ARGV[3] == '' then now = readClock('', nil) else now = tonumber(ARGV[3]) end
local moved, gone, vals = false, false, {}
local keepMark = ARGV[4] == '1'
for i = 1, n do
  local o = 4 + 6 * (i - 1)
  -- A key of another type (written since the reservation) holds no reservation: nothing back.
  local v = redis.pcall('HGET', KEYS[tonumber(ARGV[o + 1])], ARGV[o + 2])
  if type(v) == 'table' then return 0 end
  vals[i] = v
  if not v then gone = true elseif double(v) ~= tonumber(ARGV[o + 3]) then moved = true end
end
if gone then return -1 end
if moved then return 0 end
local back = 0
for i = 1, n do
  local o = 4 + 6 * (i - 1)
  local key, f = KEYS[tonumber(ARGV[o + 1])], ARGV[o + 2]
  local t, k, span = tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5]), tonumber(ARGV[o + 6])
  for _ = 1, k do t = t + span end
  local ttl = math.ceil(t - now)
  if ttl > 0 then
    local packed = struct.pack('<d', t)
    -- An idle batch's give-back (ARGV[4]): the owner's mark (\`<owner>|\` and the field as it
    -- left it) follows it: the bucket is still this instance's alone, and its next
    -- reservation sees so (else it would read its own give-back as another instance's move,
    -- and fall to batches of 1).
    local mark = nil
    if keepMark then mark = redis.call('HGET', key, '~o' .. f) end
    if mark and #mark > 8 and string.sub(mark, -8) == vals[i] then
      redis.call('HSET', key, f, packed, '~o' .. f, string.sub(mark, 1, #mark - 8) .. packed)
    else
      redis.call('HSET', key, f, packed)
      redis.call('HDEL', key, '~o' .. f)
      mark = nil
    end
    -- HSET drops a field's own TTL: set it again where fields carry theirs (a hash without
    -- \`~e\`; a server without HPEXPIRE has no such hash of the store's).
    if redis.call('HEXISTS', key, '~e') == 0 then
      local pttl = math.min(ttl, ${MAX_TTL_MS}) + 1000
      if mark then
        redis.pcall('HPEXPIRE', key, pttl, 'FIELDS', 2, f, '~o' .. f)
      else
        redis.pcall('HPEXPIRE', key, pttl, 'FIELDS', 1, f)
      end
    end
  else
    redis.call('HDEL', key, f, '~o' .. f)
    if redis.call('HLEN', key) == 1 and redis.call('HEXISTS', key, '~e') == 1 then redis.call('DEL', key) end
  end
  back = back + 1
end
return back
`;
