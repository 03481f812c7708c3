// Over 400 lines: the generator of one plan's Lua, whose parts (reads, the refusal branch, the
// writes of every tier kind, the two kinds of script) emit statements that must match one
// another and the generic script's; split, they would be read apart.
/**
 * Scripts generated for one plan shape: the generic `consume` script (`decision-scripts.ts`)
 * unrolled for a given list of tiers, with every figure (limit, cost, rate, window) written
 * into the Lua as a literal, and, in the kind a plan gets first, its tiers' field names in
 * the tracker hash and the server's field-TTL mode too.
 *
 * Why: the generic script reads 9 figures per tier from ARGV, builds a table per figure,
 * and loops; on Redis 7.0 that bookkeeping cost a one-tier decision 13 µs of Redis CPU,
 * against 5 µs for a minimal one-key script doing the same GET and SET. Unrolled, a plan's
 * own script does only its tiers' reads, comparisons and writes. Each argument of a call
 * costs Redis about 2,000 instructions (parsed off the socket, made a Lua string, put in
 * ARGV); field names and mode written in saved a three-tier decision four of them, 9 % of
 * Redis's instructions.
 *
 * The generated code decides as the generic script, statement for statement (same
 * comparisons on the same doubles, same replies, same Redis calls but where noted at
 * `planScriptLua`), so the two decide alike and share the key layout: one tracker's plans
 * may be decided by either. A figure reaches Lua as JavaScript's `String(n)` in both (ARGV
 * parsed with `tonumber`, or a literal parsed by Lua's lexer: both `strtod`), so no figure
 * is rounded differently; a field name as the same UTF-8 bytes (`luaString`).
 *
 * Eligible: plans of token buckets, sliding logs and sliding counters kept in one tracker
 * hash, with finite figures, on servers with or without hash-field TTLs. Concurrency tiers
 * (lease hashes, instance fields) stay on the generic script. A store writes scripts for at
 * most `planScripts` shapes with field names (option; default 64), then for as many shapes
 * taking field names as arguments, so that plans built from data cannot fill Redis's
 * script cache; further plans use the generic script.
 */
import { AlgorithmKind, type RateLimitPlan, type TierSpec } from '../../interfaces/plan.interface.js';
import {
  BUCKET_WAIT_LUA,
  CLOCK_LUA,
  COUNTER_LUA,
  COUNTER_WAIT_LUA,
  FMT_LUA,
  hashTtlFloorLua,
  LOG_FIELD_LAZY_LUA,
  LOG_LIVE_LUA,
  LOG_WAIT_LUA,
  MAX_TTL_MS,
  NEG_LUA,
  PRELUDE_LUA,
  writeTrackerStatements,
} from './lua-helpers.js';
import type { RedisStoreClient } from './client-factory.js';
import { clockKeyOf, trackerHashOf } from './redis-keys.js';
import { defineScript, type ScriptCall } from './script-commands.js';
import type { FieldTtlMode } from './server-checks.js';

/** Default of the store option `planScripts`: plan shapes that get a script of their own. */
export const DEFAULT_PLAN_SCRIPTS = 64;
/** Largest `planScripts` accepted. */
export const MAX_PLAN_SCRIPTS = 1024;
/** Plans with more tiers stay on the generic script (Lua allows 200 locals per function). */
const MAX_TIERS = 16;

/** A plan's own scripts and the arguments of one call to them. */
export interface PlanScriptArgs {
  /** Names the shape: equal signatures have equal Lua (for equal field names and mode). */
  readonly signature: string;
  /** Each tier's field in the tracker hash, in plan order. */
  readonly fields: readonly string[];
  /**
   * `[numkeys, ...KEYS, ...ARGV]` of the script with the field names written in: KEYS the
   * tracker hash, each sliding log's key, and the clock key (app clock); ARGV the app time
   * and the nonce of sliding-log members (app clock only; the nonce for plans with a
   * sliding log only).
   * Per-call slots are empty.
   */
  readonly args: readonly string[];
  /**
   * Where the script that takes the field names as arguments reads the field-TTL mode: its
   * arguments are `args`, the mode, and each tier's field.
   */
  readonly fieldTtlsAt: number;
  /** Index of the app time in both, -1 on Redis's clock. */
  readonly nowAt: number;
  /** Index of the nonce in both, -1 without sliding logs or on Redis's clock. */
  readonly nonceAt: number;
}

/**
 * The plan scripts of one store, defined on the client the first time a plan needs one:
 * - per plan shape and field names, a script with the field names and the server's
 *   field-TTL mode written in (one per handler and message type, in practice; one per mode
 *   the server is seen in, which changes only when it is upgraded or replaced): at most
 *   `max` such scripts, whatever their modes;
 * - past those, per plan shape, a script that takes the field names and mode as arguments
 *   (each argument costs Redis about 2,000 instructions a call): at most `max` more.
 *
 * So a store defines at most `2 * max` plan scripts. They are loaded with EVAL (ioredis's
 * fallback after NOSCRIPT), and Redis 7.4 and later keep at most 500 scripts loaded that
 * way, dropping the least recently used: past about 245 (with the store's eight other
 * scripts), plans in rotation would reload theirs.
 */
export class PlanScriptBook {
  /** By shape and field names: the script per field-TTL mode. */
  private readonly named = new Map<string, (ScriptCall | undefined)[]>();
  private readonly shapes = new Map<string, ScriptCall>();
  private scripts = 0;
  private namedScripts = 0;
  /** Scripts with field names written in: `max` (tests set 0 to run every plan on the other kind). */
  private namedMax: number;

  constructor(
    private readonly client: RedisStoreClient,
    private readonly max: number,
  ) {
    this.namedMax = max;
  }

  /** Scripts defined so far, of both kinds. */
  get size(): number {
    return this.scripts;
  }

  /** The script of a shape with these field names, in this mode; undefined once `max` are defined. */
  namedCallFor(
    signature: string,
    specs: readonly TierSpec[],
    appClock: boolean,
    fields: readonly string[],
    mode: FieldTtlMode,
  ): ScriptCall | undefined {
    const name = `${signature}|${JSON.stringify(fields)}`;
    let modes = this.named.get(name);
    const known = modes?.[mode];
    if (known !== undefined) return known;
    if (this.namedScripts >= this.namedMax) return undefined;
    const call = this.define(planScriptLua(specs, appClock, { fields, mode }));
    this.namedScripts++;
    if (modes === undefined) {
      modes = [];
      this.named.set(name, modes);
    }
    modes[mode] = call;
    return call;
  }

  /** The script of a shape taking field names and mode as arguments; undefined once `max` have one. */
  callFor(signature: string, specs: readonly TierSpec[], appClock: boolean): ScriptCall | undefined {
    let call = this.shapes.get(signature);
    if (call === undefined && this.shapes.size < this.max) {
      call = this.define(planScriptLua(specs, appClock));
      this.shapes.set(signature, call);
    }
    return call;
  }

  private define(lua: string): ScriptCall {
    this.scripts++;
    return defineScript(this.client, 'plan', lua, false);
  }
}

/**
 * A Lua string literal of `text`'s UTF-8 bytes (what ioredis sends for it as an argument):
 * every byte but printable ASCII, the quote and the backslash as a three-digit `\ddd`.
 */
export function luaString(text: string): string {
  let out = "'";
  for (const byte of Buffer.from(text, 'utf8')) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x27 && byte !== 0x5c
        ? String.fromCharCode(byte)
        : `\\${String(byte).padStart(3, '0')}`;
  }
  return `${out}'`;
}

/**
 * A literal of a figure, as `String(n)` spells it (what the generic script's ARGV carries);
 * negative figures in parentheses, so that `a - -1` never appears.
 */
function num(value: number): string {
  const text = String(value);
  return value < 0 ? `(${text})` : text;
}

/** Whether every figure of a tier is a finite number (else the tier stays generic). */
function finite(spec: TierSpec): boolean {
  const figures =
    spec.kind === AlgorithmKind.TokenBucket
      ? [spec.limit, spec.cost, spec.slack, spec.span, spec.intervalMs, spec.nearBound]
      : spec.kind === AlgorithmKind.Concurrency
        ? []
        : [spec.limit, spec.cost, spec.windowMs];
  return figures.every((figure) => typeof figure === 'number' && Number.isFinite(figure));
}

/**
 * The shape of a plan: its tiers' kinds and figures and the clock. Undefined when the plan
 * is not eligible for a script of its own.
 */
export function planSignature(plan: RateLimitPlan, appClock: boolean): string | undefined {
  if (plan.tiers.length > MAX_TIERS) return undefined;
  let hash: string | undefined;
  const parts = [appClock ? 'app' : 'redis'];
  for (const { key, spec } of plan.tiers) {
    if (spec.kind === AlgorithmKind.Concurrency || !finite(spec)) return undefined;
    if (spec.kind === AlgorithmKind.TokenBucket) {
      parts.push(`b${spec.limit},${spec.cost},${spec.slack},${spec.span},${spec.intervalMs},${spec.nearBound}`);
    } else {
      parts.push(`${spec.kind === AlgorithmKind.SlidingLog ? 'l' : 'c'}${spec.limit},${spec.cost},${spec.windowMs}`);
    }
    const own = trackerHashOf(key).hash;
    if (hash !== undefined && own !== hash) return undefined;
    hash = own;
  }
  return parts.join('|');
}

/** The arguments of a plan's own scripts (see `PlanScriptArgs`); the plan must be eligible. */
export function planScriptArgs(plan: RateLimitPlan, signature: string, appClock: boolean): PlanScriptArgs {
  const keys = [trackerHashOf(plan.tiers[0]!.key).hash];
  const fields: string[] = [];
  for (const { key, spec } of plan.tiers) {
    fields.push(trackerHashOf(key).field);
    // A log's own key: its sorted set, once it outgrows its field.
    if (spec.kind === AlgorithmKind.SlidingLog) keys.push(key);
  }
  if (appClock) keys.push(clockKeyOf(plan.tiers[0]!.key));
  const logs = plan.tiers.some(({ spec }) => spec.kind === AlgorithmKind.SlidingLog);
  // Per-call slots only where the script reads them (each argument costs the client and Redis).
  const args = [String(keys.length), ...keys];
  const nowAt = appClock ? args.push('') - 1 : -1;
  // The nonce of sliding-log members: Redis's time on its clock (the script reads it).
  const nonceAt = logs && appClock ? args.push('') - 1 : -1;
  return { signature, fields, args, fieldTtlsAt: args.length, nowAt, nonceAt };
}

/** The tiers a plan script decides: every kind but concurrency. */
type ScriptedSpec = Exclude<TierSpec, { readonly kind: typeof AlgorithmKind.Concurrency }>;

/** One tier as the generated Lua sees it. */
interface TierCode {
  readonly spec: ScriptedSpec;
  /** Lua index (from 1). */
  readonly i: number;
  /** The state variable, `s<i>`. */
  readonly s: string;
  /** Its field: a Lua string literal, or the ARGV slot holding it. */
  readonly field: string;
  /** Its value's index in the HMGET reply. */
  readonly value: number;
  /** Its KEYS index (sliding logs: the sorted set a log moves to when it outgrows its field). */
  readonly key: number;
}

/** Field names and field-TTL mode written into a plan script (else they are arguments). */
export interface PlanScriptFields {
  readonly fields: readonly string[];
  readonly mode: FieldTtlMode;
}

/**
 * The Lua of a plan shape: `decision-scripts.ts`'s `consume`, unrolled for these tiers
 * (see there for the reply), with the field names and field-TTL mode written in when
 * `named` is given. Statement for statement where it decides, so keep the two in step.
 *
 * Cheaper than the generic script's statements, with the same effect:
 * - a log held in its field is read without decoding it (the entry a decision needs is at
 *   a known offset) and, for one event with nothing live, written without a table;
 *   `logRead` and `logWrite` are made only for a log in its sorted set, a refusal, or a
 *   write that keeps older entries;
 * - when every tier writes its field (none deleted), one HSET (or HSETEX) names them all,
 *   without a table of them.
 */
export function planScriptLua(specs: readonly TierSpec[], appClock: boolean, named?: PlanScriptFields): string {
  const hasLogs = specs.some((spec) => spec.kind === AlgorithmKind.SlidingLog);
  const hasCounters = specs.some((spec) => spec.kind === AlgorithmKind.SlidingCounter);
  // ARGV: the app time and the nonce of sliding-log members (app clock only; the nonce with
  // sliding logs only), then, without `named`, the field-TTL mode and the hash fields. On
  // Redis's clock the nonce is its time to the microsecond: another decision of the same
  // tracker's log at the same microsecond (the clock stepped back) is taken care of where
  // members are added (`logWrite`).
  let argc = 0;
  const nowArg = appClock ? `ARGV[${++argc}]` : '';
  const nonce = !hasLogs ? 'nil' : appClock ? `ARGV[${++argc}]` : "t[1] .. '.' .. t[2]";
  const modeArg = named === undefined ? `ARGV[${++argc}]` : '';
  const firstField = argc + 1;
  let logs = 0;
  const tiers: TierCode[] = specs.map((any, index) => {
    if (any.kind === AlgorithmKind.Concurrency) throw new Error('a plan script cannot decide a concurrency tier');
    const spec: ScriptedSpec = any;
    const i = index + 1;
    const key = spec.kind === AlgorithmKind.SlidingLog ? 1 + ++logs : 0;
    const field = named === undefined ? `ARGV[${firstField + index}]` : luaString(named.fields[index]!);
    return { spec, i, s: `s${i}`, field, value: 2 + index, key };
  });
  const mode = named === undefined ? 'fieldTtls' : String(named.mode);
  // fmt for the clock key; logs declare it with their functions, made on first need.
  // A server with hash-field TTLs (7.4 and later) always replicates effects: the prelude's
  // call asking Redis 5 and 6 for it is left out there.
  const out: string[] = [named !== undefined && named.mode > 0 ? NEG_LUA : PRELUDE_LUA];
  if (appClock) out.push(FMT_LUA);
  if (hasLogs) out.push(appClock ? 'local logRead, logWrite' : 'local fmt, logRead, logWrite');
  if (hasCounters) out.push(COUNTER_LUA);
  if (appClock) {
    out.push(
      CLOCK_LUA,
      'local clockKey = KEYS[#KEYS]',
      `local now = readClock(${nowArg}, clockKey)`,
      'local maxTtl = 0',
    );
  } else {
    out.push("local t = redis.call('TIME')", 'local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000');
  }
  if (named === undefined) out.push(`local fieldTtls = tonumber(${modeArg})`);
  const fieldList = named === undefined ? `unpack(ARGV, ${firstField})` : tiers.map(({ field }) => field).join(', ');
  // A key of another type at the tracker hash reads as an empty hash and is deleted, never an
  // error (as in the generic script); redis.pcall costs what redis.call does.
  out.push(
    `local v = redis.pcall('HMGET', KEYS[1], '~e', ${fieldList})`,
    "if v.err then redis.call('DEL', KEYS[1]); v = {} end",
    doubleOf('hexp', 'v[1]', 'nil'),
  );
  for (const tier of tiers) out.push(stateOf(tier));

  out.push(`if not (${tiers.map(allowsOf).join(' and ')}) then`);
  if (specs.some((spec) => spec.kind === AlgorithmKind.TokenBucket)) out.push(BUCKET_WAIT_LUA);
  if (hasLogs) out.push(LOG_WAIT_LUA, LOG_FIELD_LAZY_LUA, LOG_LIVE_LUA);
  if (hasCounters) out.push(COUNTER_WAIT_LUA);
  out.push('local worst, worstWait = 0, 0', 'local w');
  for (const tier of tiers) {
    out.push(`w = ${waitOf(tier)}`, `if w > worstWait then worst = ${tier.i}; worstWait = w end`);
  }
  out.push(
    "if worst == 0 then return redis.error_reply('wsrl: a refused plan with no wait') end",
    'if worstWait == math.huge then worstWait = -1 end',
    'local rem = 0',
  );
  tiers.forEach((tier, index) =>
    out.push(`${index === 0 ? 'if' : 'elseif'} worst == ${tier.i} then`, remainingOf(tier)),
  );
  out.push('end', 'return { 0, worst - 1, worstWait, rem }', 'end');

  // Each writing tier's new value (val<i>) and the time until it equals a fresh one's (ttl<i>,
  // ms; not above 0: its field is deleted). A log of cost 0 writes nothing.
  const writers = tiers.filter(({ spec }) => !(spec.kind === AlgorithmKind.SlidingLog && !(spec.cost > 0)));
  out.push('local near = 0');
  for (const tier of writers) out.push(writeOf(tier, appClock, nonce));
  if (writers.length > 0) {
    // One TTL per hash (mode 0) into a hash without `~e`: what it already holds needs, read
    // once here, before the write (`hashTtlFloorLua`); one copy of it for both writes below.
    const floorIf =
      mode === '0' ? 'hexp == nil' : mode === '1' || mode === '2' ? undefined : `hexp == nil and ${mode} == 0`;
    if (floorIf !== undefined)
      out.push('local hfloor', `if ${floorIf} then`, hashTtlFloorLua('KEYS[1]', 'hfloor'), 'end');
    const floor = floorIf === undefined ? '' : 'if hfloor > at then at = hfloor end';
    out.push(
      `if ${writers.map(({ i }) => `ttl${i} > 0`).join(' and ')} then`,
      `local hmax = ttl${writers[0]!.i}`,
      ...writers.slice(1).map(({ i }) => `if ttl${i} > hmax then hmax = ttl${i} end`),
      writeAll(writers, mode, floor),
      'else',
      setsAndDels(writers, mode, floor),
      'end',
    );
  }
  if (appClock) out.push('saveClock(clockKey, now, maxTtl)');
  out.push('if near > 0 then return { 1, near - 1 } end', 'return 1');
  // Without comment lines (the helpers' own, repeated where logs are made on need): a
  // smaller script in Redis's cache. No string here spans lines.
  return out.join('\n').replace(/^[ \t]*--.*\n/gm, '');
}

/**
 * Writes every tier's field at once (none is deleted): `writeTrackerStatements(floor)` for a
 * list of fields known here, with `hmax` their longest TTL (clamped to `MAX_TTL_MS`), in the
 * field-TTL mode `mode` (a digit, or the variable holding it).
 */
function writeAll(writers: readonly TierCode[], mode: string, floor: string): string {
  const pairs = writers.map(({ field, i }) => `${field}, val${i}`).join(', ');
  const names = writers.map(({ field }) => field).join(', ');
  const hashTtl = [
    'local at = now + hmax',
    'if hexp ~= nil and not (at > hexp) then',
    `  redis.call('HSET', KEYS[1], ${pairs})`,
    'else',
    '  at = at + 1000',
    ...(floor === '' ? [] : [`  if hexp == nil then ${floor} end`]),
    `  redis.call('HSET', KEYS[1], ${pairs}, '~e', struct.pack('<d', at))`,
    "  redis.call('PEXPIRE', KEYS[1], math.ceil(at - now))",
    'end',
  ].join('\n');
  const hsetex = `redis.call('HSETEX', KEYS[1], 'PX', hmax + 1000, 'FIELDS', ${writers.length}, ${pairs})`;
  const hpexpire = [
    `redis.call('HSET', KEYS[1], ${pairs})`,
    `redis.call('HPEXPIRE', KEYS[1], hmax + 1000, 'FIELDS', ${writers.length}, ${names})`,
  ].join('\n');
  // As in writeTrackerStatements: no TTL past what Redis accepts.
  const clamp = `if hmax > ${MAX_TTL_MS} then hmax = ${MAX_TTL_MS} end`;
  if (mode === '0') return [clamp, hashTtl].join('\n');
  if (mode === '1') return [clamp, 'if hexp == nil then', hpexpire, 'else', hashTtl, 'end'].join('\n');
  if (mode === '2') return [clamp, 'if hexp == nil then', hsetex, 'else', hashTtl, 'end'].join('\n');
  return [
    clamp,
    `if ${mode} == 2 and hexp == nil then`,
    hsetex,
    `elseif ${mode} == 1 and hexp == nil then`,
    hpexpire,
    'else',
    hashTtl,
    'end',
  ].join('\n');
}

/**
 * Writes the fields of tiers still needed and deletes the others (the hash too once only
 * `~e` is left): `sets` made at its largest size (each tier's field and value, and `~e`'s),
 * filled up to `ns`, its unused slots cleared before the write (a table grown one slot at a
 * time is reallocated as it grows); `dels` made only when a field is deleted.
 */
function setsAndDels(writers: readonly TierCode[], mode: string, floor: string): string {
  const slots = 2 * writers.length + 2;
  const out = [`local sets, ns, dels, hmax = { ${Array(slots).fill('false').join(', ')} }, 0, nil, 0`];
  for (const { field, i } of writers) {
    out.push(
      `if ttl${i} > 0 then`,
      `  sets[ns + 1] = ${field}`,
      `  sets[ns + 2] = val${i}`,
      '  ns = ns + 2',
      `  if ttl${i} > hmax then hmax = ttl${i} end`,
      'else',
      '  if dels == nil then dels = {} end',
      `  dels[#dels + 1] = ${field}`,
      'end',
    );
  }
  out.push(
    'if ns > 0 then',
    `for j = ns + 1, ${slots} do sets[j] = nil end`,
    // writeTracker's statements inlined: a closure made on every call costs more than they do.
    `local key, s, ttl, exp, mode = KEYS[1], sets, hmax, hexp, ${mode}`,
    writeTrackerStatements(floor),
    'end',
    'if dels ~= nil then',
    "  redis.call('HDEL', KEYS[1], unpack(dels))",
    "  if redis.call('HLEN', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], '~e') == 1 then redis.call('DEL', KEYS[1]) end",
    'end',
  );
  return out.join('\n');
}

/**
 * `local <name>`: the number in a field of 8 bytes (`v`, a Lua expression), else `none`: the
 * generic scripts' `double` (`lua-helpers.ts`) inlined, as no closure is made for it.
 */
function doubleOf(name: string, v: string, none: string): string {
  return [
    `local ${name} = ${none}`,
    'do',
    `  local r = ${v}`,
    '  if r and #r == 8 then',
    "    r = struct.unpack('<d', r)",
    `    if r == r then ${name} = r end`,
    '  end',
    'end',
  ].join('\n');
}

/** `logRead`'s figures: the log's limit and cost, as its calls here pass them. */
function logFigures(spec: ScriptedSpec): string {
  return `${num(spec.limit)}, ${num(spec.cost)}`;
}

/** Sets `log<s>` to the entries of a log held in its field (raw<s>; ms<s> >= 0), as `logRead` reads them. */
function decodeLog({ spec, s, key }: TierCode): string {
  return `if m${s} >= 0 then local _, _, entries = logRead(raw${s}, KEYS[${key}], ${logFigures(spec)}, true); log${s} = entries end`;
}

function stateOf(tier: TierCode): string {
  const { spec, s, value, key } = tier;
  if (spec.kind === AlgorithmKind.TokenBucket) return doubleOf(s, `v[${value}]`, 'NEG');
  if (spec.kind === AlgorithmKind.SlidingCounter) return `local ${s} = counterState(v[${value}])`;
  // A log: `logRead`'s answer. Held in its field (m<s> entries, -1 in sorted-set mode), the
  // (limit - cost + 1)-th newest entry is read at its offset, without a table of them all.
  const back = Math.floor(spec.limit) - spec.cost + 1;
  const raw = `raw${s}`;
  const lines = [
    `local ${raw} = v[${value}]`,
    `local ${s}, full${s}, log${s}, m${s} = NEG, false, nil, -1`,
    `if ${raw} ~= 'Z' then`,
    `  m${s} = 0`,
    `  if ${raw} and #${raw} > 1 and (#${raw} - 1) % 8 == 0 and string.byte(${raw}, 1) == 76 then m${s} = (#${raw} - 1) / 8 else ${raw} = nil end`,
  ];
  if (back >= 1) {
    lines.push(
      `  if m${s} >= ${num(back)} then ${s} = struct.unpack('<d', ${raw}, 2 + 8 * (m${s} - ${num(back)})); full${s} = true end`,
    );
  }
  lines.push(
    'else',
    LOG_FIELD_LAZY_LUA,
    `  ${s}, full${s}, log${s} = logRead(${raw}, KEYS[${key}], ${logFigures(spec)}, true)`,
    'end',
  );
  return lines.join('\n');
}

function allowsOf({ spec, s }: TierCode): string {
  if (spec.cost > spec.limit) return 'false';
  switch (spec.kind) {
    case AlgorithmKind.TokenBucket:
      return `${s} - now <= ${num(spec.slack)}`;
    case AlgorithmKind.SlidingLog:
      return `${s} <= now - ${num(spec.windowMs)}`;
    default:
      return `counterAllows(${s}, now, ${num(spec.windowMs)}, ${num(spec.limit)}, ${num(spec.cost)})`;
  }
}

function waitOf({ spec, s }: TierCode): string {
  if (spec.cost > spec.limit) return 'math.huge';
  switch (spec.kind) {
    case AlgorithmKind.TokenBucket:
      return `bucketWait(${s}, now, ${num(spec.slack)})`;
    case AlgorithmKind.SlidingLog:
      return `logWait(${s}, now, ${num(spec.windowMs)})`;
    default:
      return `counterWait(${s}, now, ${num(spec.windowMs)}, ${num(spec.limit)}, ${num(spec.cost)})`;
  }
}

function remainingOf(tier: TierCode): string {
  const { spec, s, key } = tier;
  const limit = num(spec.limit);
  // Whole units: a limit that is not whole leaves its whole part.
  const whole = num(Math.floor(spec.limit));
  switch (spec.kind) {
    case AlgorithmKind.TokenBucket:
      return [
        `if ${s} <= now then rem = ${whole} else`,
        `  local tokens = ${limit} - (${s} - now) / ${num(spec.intervalMs)}`,
        '  if tokens > 0 then rem = math.floor(tokens) else rem = 0 end',
        'end',
      ].join('\n');
    case AlgorithmKind.SlidingLog:
      return [
        decodeLog(tier),
        `local live = logLive(log${s}, KEYS[${key}], now, ${num(spec.windowMs)})`,
        `rem = math.max(0, ${whole} - live)`,
      ].join('\n');
    default: {
      const w = num(spec.windowMs);
      return [
        `local start, p, c = rolled(${s}[1], ${s}[2], ${s}[3], now, ${w})`,
        `rem = math.max(0, math.floor(${limit} - weighted(start, p, c, now, ${w})))`,
      ].join('\n');
    }
  }
}

/** `val<i>` and `ttl<i>` of a writing tier (see `planScriptLua`). */
function writeOf(tier: TierCode, appClock: boolean, nonce: string): string {
  const { spec, s, i, key } = tier;
  const lines = [`local val${i}, ttl${i}`, 'do'];
  switch (spec.kind) {
    case AlgorithmKind.TokenBucket:
      lines.push(
        `local fullAt = ${s}`,
        'if not (fullAt > now) then fullAt = now end',
        `fullAt = fullAt + ${num(spec.span)}`,
        `if near == 0 and (fullAt - now) * 5 > ${num(spec.nearBound)} then near = ${i} end`,
        `ttl${i} = math.ceil(fullAt - now)`,
        `val${i} = struct.pack('<d', fullAt)`,
      );
      break;
    case AlgorithmKind.SlidingLog: {
      const w = num(spec.windowMs);
      const write = [
        LOG_FIELD_LAZY_LUA,
        decodeLog(tier),
        `val${i} = logWrite(log${s}, full${s}, KEYS[${key}], ${logFigures(spec)}, now, ${w}, ${nonce})`,
      ].join('\n');
      lines.push(`ttl${i} = math.ceil(${w})`, `if ttl${i} > 0 then`);
      if (spec.cost === 1) {
        // logWrite's first case: one event and nothing live (or an empty log) in the field.
        lines.push(
          `if m${s} >= 0 and (m${s} == 0 or struct.unpack('<d', raw${s}, #raw${s} - 7) <= now - ${w}) then`,
          // 'L' and the double in one string (76 is 'L'): no second string to concatenate.
          `val${i} = struct.pack('<Bd', 76, now)`,
          'else',
          write,
          'end',
        );
      } else {
        lines.push(write);
      }
      lines.push('end');
      break;
    }
    default: {
      const w = num(spec.windowMs);
      lines.push(
        `local start, p, c = rolled(${s}[1], ${s}[2], ${s}[3], now, ${w})`,
        `c = c + ${num(spec.cost)}`,
        'local freshAt = NEG',
        `if c > 0 then freshAt = start + 2 * ${w} elseif p > 0 then freshAt = start + ${w} end`,
        `ttl${i} = math.ceil(freshAt - now)`,
        `val${i} = struct.pack('<ddd', start, p, c)`,
      );
    }
  }
  if (appClock) lines.push(`if ttl${i} > maxTtl then maxTtl = ttl${i} end`);
  lines.push('end');
  return lines.join('\n');
}
