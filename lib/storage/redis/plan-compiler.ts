import { randomBytes } from 'node:crypto';
import {
  ALLOWED,
  ALLOWED_NEAR_LIMIT,
  AlgorithmKind,
  type RateLimitDecision,
  type RateLimitPlan,
  type RateLimitRejected,
  type TierSpec,
  type TierStatus,
} from '../../interfaces/plan.interface.js';
import { checkSpec, checkTierKeys } from '../../plans/check-spec.js';
import { planScriptArgs, planSignature, type PlanScriptArgs, type PlanScriptBook } from './plan-scripts.js';
import { clockKeyOf, trackerHashOf } from './redis-keys.js';
import type { ScriptCall } from './script-commands.js';
import type { FieldTtlMode } from './server-checks.js';

/** A plan turned into script arguments once; plans are reused, so this is cached. */
export interface CompiledPlan {
  readonly plan: RateLimitPlan;
  /**
   * `[numkeys, ...KEYS, ...ARGV]` of consume and peek (see `decision-scripts.ts`), with the
   * per-call slots empty.
   */
  readonly args: readonly string[];
  readonly nowAt: number;
  readonly nonceAt: number;
  readonly fieldTtlsAt: number;
  readonly usesNonce: boolean;
  /**
   * Names the plan in the block cache: each tier's key and figures (algorithm, limit, cost,
   * rate or window), so that plans deciding one key under other figures (a plan's larger
   * window on the module's log) never answer each other's refusals.
   */
  readonly blockKey: string;
  readonly leaseKeys: readonly string[];
  readonly leaseCosts: readonly number[];
  /** `[numkeys, ...KEYS, ...ARGV]` of release; undefined without concurrency tiers. */
  readonly releaseArgs: readonly string[] | undefined;
  /**
   * The plan shape's own consume scripts (`plan-scripts.ts`) and their arguments; undefined
   * when the plan stays on the generic script.
   */
  readonly own: OwnScript | undefined;
}

/**
 * A plan's own scripts (see `PlanScriptArgs`), looked up at the first call that needs each:
 * per field-TTL mode, the one with the field names written in (`null`: the store has its
 * fill of those), and the one taking them as arguments.
 */
type OwnScript = PlanScriptArgs & {
  readonly specs: readonly TierSpec[];
  readonly named: (ScriptCall | null | undefined)[];
  shape: ScriptCall | null | undefined;
  /**
   * The arguments of the script taking field names (`args`, the mode, the fields) for the
   * server's field-TTL mode, made at the first call that needs them, again when the mode
   * changes.
   */
  shapeArgs?: string[];
};

/** The field-TTL modes as script arguments. */
const MODES = ['0', '1', '2'] as const;

export interface PlanCompilerOptions {
  readonly instanceId: string;
  readonly leaseTtlMs: number;
  readonly appClock: (() => number) | undefined;
  /** Scripts per plan shape; undefined: every plan runs the generic consume script. */
  readonly planScripts: PlanScriptBook | undefined;
}

/**
 * Turns plans into the arguments of the consume, peek and release scripts (once per plan
 * object), fills in the per-call slots (app time, sliding-log nonce), and reads the
 * scripts' replies back into decisions and tier states.
 */
export class PlanCompiler {
  private readonly compiled = new WeakMap<RateLimitPlan, CompiledPlan>();
  private nonce = 0;
  /** Starts every sliding-log member: random per store object, so members never repeat across restarts or stores. */
  private readonly noncePrefix = `${randomBytes(9).toString('base64url')}.`;

  constructor(private readonly options: PlanCompilerOptions) {}

  compile(plan: RateLimitPlan): CompiledPlan {
    const cached = this.compiled.get(plan);
    if (cached !== undefined) return cached;
    const { instanceId, leaseTtlMs } = this.options;
    const tiers = plan.tiers;
    // Once per plan object: a spec made by hand that no script could decide soundly is refused.
    for (const tier of tiers) checkSpec(tier.spec);
    checkTierKeys(tiers);
    const keys = tiers.map((tier) => tier.key);
    const app = this.options.appClock !== undefined;
    // The tracker hashes of the plan's buckets, counters and logs (one, for a plan of one tracker).
    const hashes: string[] = [];
    const place = tiers.map(({ key, spec }) => {
      if (spec.kind === AlgorithmKind.Concurrency) return ['0', ''];
      const { hash, field } = trackerHashOf(key);
      let index = hashes.indexOf(hash);
      if (index < 0) index = hashes.push(hash) - 1;
      return [String(index + 1), field];
    });
    // A bucket's or a counter's key is not named: its state is a field of the tracker hash
    // (and on a Cluster slot being migrated, a call naming a missing key gets TRYAGAIN).
    const ownKeys = tiers
      .filter(({ spec }) => spec.kind === AlgorithmKind.SlidingLog || spec.kind === AlgorithmKind.Concurrency)
      .map((tier) => tier.key);
    const args = [String(hashes.length + ownKeys.length + (app ? 1 : 0)), ...hashes, ...ownKeys];
    if (app) args.push(clockKeyOf(keys[0]!));
    const nowAt = args.length;
    args.push('', String(tiers.length));
    const nonceAt = args.length;
    args.push('', instanceId, plan.lease ?? '', String(leaseTtlMs), String(hashes.length));
    const fieldTtlsAt = args.length;
    args.push('0');
    const leaseKeys: string[] = [];
    const leaseCosts: number[] = [];
    let usesNonce = false;
    tiers.forEach(({ key, spec }, i) => {
      switch (spec.kind) {
        case AlgorithmKind.TokenBucket:
          args.push('0', String(spec.limit), String(spec.cost), String(spec.slack), String(spec.span));
          args.push(String(spec.intervalMs), String(spec.nearBound));
          break;
        case AlgorithmKind.SlidingLog:
          usesNonce = true;
          args.push('1', String(spec.limit), String(spec.cost), String(spec.windowMs), '0', '0', '0');
          break;
        case AlgorithmKind.SlidingCounter:
          args.push('2', String(spec.limit), String(spec.cost), String(spec.windowMs), '0', '0', '0');
          break;
        case AlgorithmKind.Concurrency:
          args.push('3', String(spec.limit), String(spec.cost), '0', '0', '0', '0');
          leaseKeys.push(key);
          leaseCosts.push(spec.cost);
          break;
      }
      args.push(...place[i]!);
    });
    const releaseArgs =
      leaseKeys.length === 0
        ? undefined
        : [String(leaseKeys.length), ...leaseKeys, instanceId, plan.lease ?? '', ...leaseCosts.map(String)];
    const compiled: CompiledPlan = {
      plan,
      own: this.ownScript(plan, app),
      args,
      nowAt,
      nonceAt,
      fieldTtlsAt,
      usesNonce,
      blockKey: tiers.map(({ key, spec }) => `${key}\u0000${figuresOf(spec)}`).join('\u0001'),
      leaseKeys,
      leaseCosts,
      releaseArgs,
    };
    this.compiled.set(plan, compiled);
    return compiled;
  }

  private ownScript(plan: RateLimitPlan, app: boolean): OwnScript | undefined {
    const signature = this.options.planScripts === undefined ? undefined : planSignature(plan, app);
    if (signature === undefined) return undefined;
    return {
      ...planScriptArgs(plan, signature, app),
      specs: plan.tiers.map(({ spec }) => spec),
      named: [undefined, undefined, undefined],
      shape: undefined,
    };
  }

  /**
   * Sends one call of the plan's own script for the server's field-TTL mode (`compiled.own`
   * must be set): the one with its field names written in, else the one taking them as
   * arguments; undefined when the store has its fill of both kinds (the generic script
   * decides). Until the server has been read (`modeRead` false) the mode may not be the
   * server's: the script taking it as an argument decides, so no script is written for a
   * mode that will not be used again.
   */
  callOwn(compiled: CompiledPlan, fieldTtls: FieldTtlMode, modeRead = true): Promise<unknown> | undefined {
    const own = compiled.own!;
    const book = this.options.planScripts!;
    const app = this.options.appClock !== undefined;
    let named = modeRead ? own.named[fieldTtls] : null;
    if (named === undefined) {
      named = book.namedCallFor(own.signature, own.specs, app, own.fields, fieldTtls) ?? null;
      own.named[fieldTtls] = named;
    }
    if (named !== null) return named.withArgs(this.perCall(own, own.args));
    if (own.shape === undefined) own.shape = book.callFor(own.signature, own.specs, app) ?? null;
    if (own.shape === null) return undefined;
    let made = own.shapeArgs;
    const mode = MODES[fieldTtls];
    if (made?.[own.fieldTtlsAt] !== mode) {
      made = [...own.args, mode, ...own.fields];
      own.shapeArgs = made;
    }
    return own.shape.withArgs(this.perCall(own, made));
  }

  /** `made` with this call's app time and nonce, where the script reads them. */
  private perCall(own: OwnScript, made: readonly string[]): readonly string[] {
    // Nothing changes per call: the compiled arguments themselves (ioredis copies them).
    if (own.nowAt < 0 && own.nonceAt < 0) return made;
    const args = made.slice();
    if (own.nowAt >= 0) args[own.nowAt] = String(this.options.appClock!());
    if (own.nonceAt >= 0) args[own.nonceAt] = this.noncePrefix + (this.nonce++).toString(36);
    return args;
  }

  /**
   * The arguments of one call: the compiled ones with this call's time and nonce, and how the
   * server keeps hash-field TTLs.
   */
  argsOf(compiled: CompiledPlan, fieldTtls: FieldTtlMode): string[] {
    const args = compiled.args.slice();
    if (fieldTtls !== 0) args[compiled.fieldTtlsAt] = String(fieldTtls);
    if (this.options.appClock !== undefined) args[compiled.nowAt] = String(this.options.appClock());
    if (compiled.usesNonce) args[compiled.nonceAt] = this.noncePrefix + (this.nonce++).toString(36);
    return args;
  }
}

/**
 * A tier's figures in a block-cache name: what decides its refusal besides the state at its
 * key (a bucket's rate as its interval, and the slack and span the scripts compare with).
 */
function figuresOf(spec: TierSpec): string {
  const figures = `${spec.kind},${spec.limit},${spec.cost}`;
  switch (spec.kind) {
    case AlgorithmKind.TokenBucket:
      return `${figures},${spec.intervalMs},${spec.slack},${spec.span}`;
    case AlgorithmKind.SlidingLog:
    case AlgorithmKind.SlidingCounter:
      return `${figures},${spec.windowMs}`;
    default:
      return figures;
  }
}

/** Whether a consume reply says the plan was allowed. */
export function allowedReply(reply: unknown): boolean {
  return reply === 1 || reply === '1' || (Array.isArray(reply) && toNumber(reply[0]) === 1);
}

/** The decision a consume reply stands for; throws on a reply no script version gives. */
export function decisionOf(compiled: CompiledPlan, reply: unknown): RateLimitDecision {
  if (reply === 1 || reply === '1') return ALLOWED;
  if (Array.isArray(reply) && reply.length === 2 && toNumber(reply[0]) === 1) {
    const near = compiled.plan.tiers[toNumber(reply[1])];
    if (near === undefined) throw unexpected('consume', reply);
    return ALLOWED_NEAR_LIMIT[near.spec.tier];
  }
  if (!Array.isArray(reply) || reply.length !== 4 || toNumber(reply[0]) !== 0) throw unexpected('consume', reply);
  const index = toNumber(reply[1]);
  const wait = toNumber(reply[2]);
  // -1: never (a cost above the limit), as the memory store's Infinity.
  const retryAfter = wait === -1 ? Infinity : wait;
  const tier = compiled.plan.tiers[index];
  if (tier === undefined || !(retryAfter >= 1)) throw unexpected('consume', reply);
  const spec = tier.spec;
  const decision: RateLimitRejected = {
    allowed: false,
    tier: spec.tier,
    index,
    retryAfter,
    limit: spec.limit,
    remaining: toNumber(reply[3]),
  };
  return decision;
}

/** The tier states a peek reply stands for. */
export function statusesOf(plan: RateLimitPlan, reply: unknown): readonly TierStatus[] {
  const tiers = plan.tiers;
  if (!Array.isArray(reply) || reply.length !== 2 * tiers.length) throw unexpected('peek', reply);
  return tiers.map(({ spec }, i) => ({
    tier: spec.tier,
    limit: spec.limit,
    remaining: toNumber(reply[2 * i]),
    resetIn: toNumber(reply[2 * i + 1]),
  }));
}

export function toNumber(value: unknown): number {
  return typeof value === 'number' ? value : typeof value === 'string' ? Number(value) : NaN;
}

export function unexpected(script: string, reply: unknown): Error {
  return new Error(`unexpected ${script} reply ${JSON.stringify(reply)?.slice(0, 200)}`);
}
