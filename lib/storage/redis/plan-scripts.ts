/**
 * Scripts generated for one plan shape: the generic `consume` script (`decision-scripts.ts`)
 * unrolled for a given list of tiers, with every figure (limit, cost, rate, window) written
 * into the Lua as a literal.
 *
 * Why: the generic script reads 9 figures per tier from ARGV, builds a table per figure,
 * and loops; on Redis 7.0 that bookkeeping cost a one-tier decision 13 µs of Redis CPU,
 * against 5 µs for a minimal one-key script doing the same GET and SET. Unrolled, a plan's
 * own script does only its tiers' reads, comparisons and writes.
 *
 * The generated code is the generic script's, statement for statement (same Redis calls in
 * the same order, same comparisons on the same doubles, same replies), so the two decide
 * alike and share the key layout: one tracker's plans may be decided by either. A figure
 * reaches Lua as JavaScript's `String(n)` in both (ARGV parsed with `tonumber`, or a
 * literal parsed by Lua's lexer: both `strtod`), so no figure is rounded differently.
 *
 * Eligible: plans of token buckets, sliding logs and sliding counters kept in one tracker
 * hash, with finite figures, on servers with or without hash-field TTLs (an argument says
 * which). Concurrency tiers (lease hashes, instance fields) stay on the generic script. A
 * store keeps at most `planScripts` shapes (option; default 64), so that plans
 * built from data cannot fill Redis's script cache; further shapes use the generic script.
 */
import { AlgorithmKind, type RateLimitPlan, type TierSpec } from '../../interfaces/plan.interface.js';
import {
  BUCKET_WAIT_LUA,
  CLOCK_LUA,
  COUNTER_LUA,
  COUNTER_WAIT_LUA,
  FMT_LUA,
  LOG_FIELD_LUA,
  LOG_LIVE_LUA,
  LOG_WAIT_LUA,
  PRELUDE_LUA,
  WRITE_TRACKER_STATEMENTS,
} from './lua-helpers.js';
import type { RedisStoreClient } from './client-factory.js';
import { clockKeyOf, trackerHashOf } from './redis-keys.js';
import { defineScript, type ScriptCall } from './script-commands.js';

/** Default of the store option `planScripts`: plan shapes that get a script of their own. */
export const DEFAULT_PLAN_SCRIPTS = 64;
/** Largest `planScripts` accepted. */
export const MAX_PLAN_SCRIPTS = 1024;
/** Plans with more tiers stay on the generic script (Lua allows 200 locals per function). */
const MAX_TIERS = 16;

/** A plan's own script and the arguments of one call to it. */
export interface PlanScriptArgs {
  /** Names the shape: equal signatures have equal Lua. */
  readonly signature: string;
  /**
   * `[numkeys, ...KEYS, ...ARGV]`: KEYS the tracker hash, each sliding log's key, and the
   * clock key (app clock); ARGV the app time (app clock only), the nonce of sliding-log
   * members (plans with a sliding log only), the field-TTL mode ('0': the server has no
   * hash-field TTLs), then each tier's field in the tracker hash, in plan order. Per-call
   * slots are empty.
   */
  readonly args: readonly string[];
  /** Index of the field-TTL mode in `args` ('0' there: a server without hash-field TTLs). */
  readonly fieldTtlsAt: number;
  /** Index of the app time in `args`, -1 on Redis's clock. */
  readonly nowAt: number;
  /** Index of the nonce in `args`, -1 without sliding logs. */
  readonly nonceAt: number;
}

/**
 * The plan scripts of one store: one per shape, defined on the client the first time a plan
 * of that shape is compiled, at most `max` of them.
 */
export class PlanScriptBook {
  private readonly calls = new Map<string, ScriptCall>();

  constructor(
    private readonly client: RedisStoreClient,
    private readonly max: number,
  ) {}

  /** Shapes with a script of their own so far. */
  get size(): number {
    return this.calls.size;
  }

  /** The call of a shape's script; undefined once `max` shapes have one. */
  callFor(signature: string, specs: readonly TierSpec[], appClock: boolean): ScriptCall | undefined {
    let call = this.calls.get(signature);
    if (call === undefined && this.calls.size < this.max) {
      call = defineScript(this.client, 'plan', planScriptLua(specs, appClock), false);
      this.calls.set(signature, call);
    }
    return call;
  }
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

/** The arguments of a plan's own script (see `PlanScriptArgs`); the plan must be eligible. */
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
  const nonceAt = logs ? args.push('') - 1 : -1;
  const fieldTtlsAt = args.push('0') - 1;
  args.push(...fields);
  return { signature, args, fieldTtlsAt, nowAt, nonceAt };
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
  /** Its field's ARGV index, and its value's index in the HMGET reply. */
  readonly field: number;
  readonly value: number;
  /** Its KEYS index (sliding logs: the sorted set a log moves to when it outgrows its field). */
  readonly key: number;
}

/**
 * The Lua of a plan shape: `decision-scripts.ts`'s `consume`, unrolled for these tiers
 * (see there for the reply). Statement for statement, so keep the two in step.
 */
export function planScriptLua(specs: readonly TierSpec[], appClock: boolean): string {
  const hasLogs = specs.some((spec) => spec.kind === AlgorithmKind.SlidingLog);
  const hasCounters = specs.some((spec) => spec.kind === AlgorithmKind.SlidingCounter);
  // ARGV: the app time (app clock only), the nonce (sliding logs only), the field-TTL mode,
  // the hash fields.
  const nonce = `ARGV[${appClock ? 2 : 1}]`;
  const fieldTtlsAt = 1 + (appClock ? 1 : 0) + (hasLogs ? 1 : 0);
  const firstField = fieldTtlsAt + 1;
  let logs = 0;
  const tiers: TierCode[] = specs.map((any, index) => {
    if (any.kind === AlgorithmKind.Concurrency) throw new Error('a plan script cannot decide a concurrency tier');
    const spec: ScriptedSpec = any;
    const i = index + 1;
    const key = spec.kind === AlgorithmKind.SlidingLog ? 1 + ++logs : 0;
    return { spec, i, s: `s${i}`, field: firstField + index, value: 2 + index, key };
  });
  // fmt for the clock key and sliding-log scores only: a closure is made on every call.
  const out: string[] = appClock || hasLogs ? [PRELUDE_LUA, FMT_LUA] : [PRELUDE_LUA];
  if (hasCounters) out.push(COUNTER_LUA);
  if (hasLogs) out.push(LOG_FIELD_LUA);
  if (appClock) {
    out.push(CLOCK_LUA, 'local clockKey = KEYS[#KEYS]', 'local now = readClock(ARGV[1], clockKey)', 'local maxTtl = 0');
  } else {
    out.push("local t = redis.call('TIME')", 'local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000');
  }
  out.push(
    `local fieldTtls = tonumber(ARGV[${fieldTtlsAt}])`,
    `local v = redis.call('HMGET', KEYS[1], '~e', unpack(ARGV, ${firstField}))`,
    doubleOf('hexp', 'v[1]', 'nil'),
  );
  for (const tier of tiers) out.push(stateOf(tier));

  out.push(`if not (${tiers.map(allowsOf).join(' and ')}) then`);
  if (specs.some((spec) => spec.kind === AlgorithmKind.TokenBucket)) out.push(BUCKET_WAIT_LUA);
  if (hasLogs) out.push(LOG_WAIT_LUA, LOG_LIVE_LUA);
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

  // `sets` made at its largest size (each tier's field and value, and `~e`'s), filled up to
  // `ns`, its unused slots cleared before the write: a table grown one slot at a time is
  // reallocated as it grows (3 % of Redis's instructions for a three-tier decision).
  // `dels` is made only when a field is deleted.
  const slots = 2 * tiers.length + 2;
  out.push(`local sets, ns, dels, hmax, near = { ${Array(slots).fill('false').join(', ')} }, 0, nil, 0, 0`);
  for (const tier of tiers) out.push(writeOf(tier, appClock, nonce));
  out.push(
    'if ns > 0 then',
    `for j = ns + 1, ${slots} do sets[j] = nil end`,
    // writeTracker's statements inlined: a closure made on every call costs more than they do.
    'local key, s, ttl, exp, mode = KEYS[1], sets, hmax, hexp, fieldTtls',
    WRITE_TRACKER_STATEMENTS,
    'end',
    'if dels ~= nil then',
    "  redis.call('HDEL', KEYS[1], unpack(dels))",
    "  if redis.call('HLEN', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], '~e') == 1 then redis.call('DEL', KEYS[1]) end",
    'end',
  );
  if (appClock) out.push('saveClock(clockKey, now, maxTtl)');
  out.push('if near > 0 then return { 1, near - 1 } end', 'return 1');
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

function stateOf({ spec, s, value, key }: TierCode): string {
  if (spec.kind === AlgorithmKind.TokenBucket) return doubleOf(s, `v[${value}]`, 'NEG');
  if (spec.kind === AlgorithmKind.SlidingCounter) return `local ${s} = counterState(v[${value}])`;
  const figures = `${num(spec.limit)}, ${num(spec.cost)}`;
  return `local ${s}, full${s}, log${s} = logRead(v[${value}], KEYS[${key}], ${figures}, true)`;
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

function remainingOf({ spec, s, key }: TierCode): string {
  const limit = num(spec.limit);
  switch (spec.kind) {
    case AlgorithmKind.TokenBucket:
      return [
        `if ${s} <= now then rem = ${limit} else`,
        `  local tokens = ${limit} - (${s} - now) / ${num(spec.intervalMs)}`,
        '  if tokens > 0 then rem = math.floor(tokens) else rem = 0 end',
        'end',
      ].join('\n');
    case AlgorithmKind.SlidingLog:
      return [
        `local live = logLive(log${s}, KEYS[${key}], now, ${num(spec.windowMs)})`,
        `rem = math.max(0, ${limit} - live)`,
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

/** Puts a hash tier's new value (or its deletion) in `sets` / `dels`. */
function put(field: number, value: string): string {
  return [
    'if ttl > 0 then',
    `  sets[ns + 1] = ARGV[${field}]`,
    `  sets[ns + 2] = ${value}`,
    '  ns = ns + 2',
    '  if ttl > hmax then hmax = ttl end',
    'else',
    '  if dels == nil then dels = {} end',
    `  dels[#dels + 1] = ARGV[${field}]`,
    'end',
  ].join('\n');
}

function writeOf({ spec, s, i, field, key }: TierCode, appClock: boolean, nonce: string): string {
  const lines = ['do', 'local ttl = 0'];
  switch (spec.kind) {
    case AlgorithmKind.TokenBucket:
      lines.push(
        `local fullAt = ${s}`,
        'if not (fullAt > now) then fullAt = now end',
        `fullAt = fullAt + ${num(spec.span)}`,
        `if near == 0 and (fullAt - now) * 5 > ${num(spec.nearBound)} then near = ${i} end`,
        'ttl = math.ceil(fullAt - now)',
        put(field, "struct.pack('<d', fullAt)"),
      );
      break;
    case AlgorithmKind.SlidingLog: {
      const w = num(spec.windowMs);
      if (spec.cost > 0) {
        const figures = `${num(spec.limit)}, ${num(spec.cost)}, now, ${w}, ${nonce}`;
        lines.push(`ttl = math.ceil(${w})`, put(field, `logWrite(log${s}, full${s}, KEYS[${key}], ${figures})`));
      }
      break;
    }
    default: {
      const w = num(spec.windowMs);
      lines.push(
        `local start, p, c = rolled(${s}[1], ${s}[2], ${s}[3], now, ${w})`,
        `c = c + ${num(spec.cost)}`,
        'local freshAt = NEG',
        `if c > 0 then freshAt = start + 2 * ${w} elseif p > 0 then freshAt = start + ${w} end`,
        'ttl = math.ceil(freshAt - now)',
        put(field, "struct.pack('<ddd', start, p, c)"),
      );
    }
  }
  if (appClock) lines.push('if ttl > maxTtl then maxTtl = ttl end');
  lines.push('end');
  return lines.join('\n');
}
