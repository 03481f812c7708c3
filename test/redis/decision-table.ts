/**
 * The shared decision table: schedules of (advance the clock, act on a plan) with the
 * decision each step must get. Every store runs the same table (memory with an injected
 * clock; Redis standalone and Cluster with `clock: 'app'` and the same injected clock), so
 * the Lua transcription of `lib/algorithms` is held to the memory store's exact answers:
 * allowed or not, which tier, `retryAfter`, `limit` and `remaining`.
 *
 * The start time is a realistic epoch in ms, a multiple of every counter window used.
 * Expected values are worked out by hand in the comments from the formulas of
 * lib/algorithms (bucket: `fullAt - now <= (C - k) * I`; log: the blocking timestamp must
 * be at least a window old; counter: `prev * (W - (now - start)) / W + curr + k <= limit`).
 * An allowed plan names the first token bucket it leaves with less than a fifth of its
 * capacity (`5 * (fullAt - now) > 4 * C * I`, i.e. `fullAt - now > 0.8 * C * I`).
 */
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import type {
  RateLimitDecision,
  RateLimitPlan,
  TierName,
  TierSpec,
  TierStatus,
  TokenBucketSpec,
} from '../../lib/interfaces/plan.interface.js';
import type { RateLimitStore } from '../../lib/storage/rate-limit-store.js';

/** Start of every scenario's clock: a multiple of 1000 (and of every window below). */
export const T0 = 1_700_000_000_000;

export interface PlanDef {
  readonly specs: readonly TierSpec[];
  readonly lease?: string;
}

export type Step =
  | { readonly advance?: number; readonly consume: string; readonly expect: RateLimitDecision }
  | { readonly advance?: number; readonly peek: string; readonly expect: readonly TierStatus[] }
  | { readonly advance?: number; readonly release: string };

export interface Scenario {
  readonly name: string;
  readonly plans: Readonly<Record<string, PlanDef>>;
  readonly steps: readonly Step[];
}

const ok: RateLimitDecision = { allowed: true };
/** Allowed, leaving that token bucket with less than a fifth of its capacity. */
const near = (tier: TierName): RateLimitDecision => ({ allowed: true, nearLimit: tier });
const no = (
  tier: TierName,
  index: number,
  retryAfter: number,
  limit: number,
  remaining: number,
): RateLimitDecision => ({
  allowed: false,
  tier,
  index,
  retryAfter,
  limit,
  remaining,
});
const status = (tier: TierName, limit: number, remaining: number, resetIn: number): TierStatus => ({
  tier,
  limit,
  remaining,
  resetIn,
});

// Capacity 3, 1 token/s: interval 1000, slack 2000, span 1000.
const bucket3 = tokenBucketSpec('global', 'g', 3, 1);
// Capacity 5, 2 tokens/s, cost 2: interval 500, slack 1500, span 1000.
const bucketCost2 = tokenBucketSpec('type', 't:chat', 5, 2, 2);
// Capacity 5, 5 tokens/s: interval 200, slack 800, span 200.
const global5 = tokenBucketSpec('global', 'g', 5, 5);
// Capacity 2, 1 token/s: interval 1000, slack 1000, span 1000.
const typeOf = (name: string) => tokenBucketSpec('type', `t:${name}`, 2, 1);
const log3 = windowSpec('expensive', 'x', 'sliding-log', 3, 1000);
const log3cost2 = windowSpec('expensive', 'x2', 'sliding-log', 3, 1000, 2);
const counter4 = windowSpec('expensive', 'xc', 'sliding-counter', 4, 1000);
const connRate = tokenBucketSpec('connection', 'cr', 10, 1);
const slots2 = concurrencySpec('concurrency', 'cc', 2);
// A log's limit of 2.5: `windowSpec` refuses it, so it is made by hand (as a store may meet it).
const logHalf: TierSpec = { ...windowSpec('expensive', 'xh', 'sliding-log', 2, 1000), limit: 2.5 };
// Cost 3 in a bucket of 2: the builders refuse it, so it is made by hand (as a store may meet it).
const overCost: TokenBucketSpec = { ...tokenBucketSpec('global', 'g', 2, 1), cost: 3, slack: -1000, span: 3000 };

export const SCENARIOS: readonly Scenario[] = [
  {
    name: 'token bucket: burst of the capacity, refusal, refill',
    plans: { p: { specs: [bucket3] } },
    steps: [
      { consume: 'p', expect: ok }, // fullAt T0+1000
      { consume: 'p', expect: ok }, // T0+2000
      { consume: 'p', expect: near('global') }, // T0+3000: 3000 > 2400
      { consume: 'p', expect: no('global', 0, 1000, 3, 0) }, // 3000 - 2000
      { advance: 400, consume: 'p', expect: no('global', 0, 600, 3, 0) }, // 2600 - 2000; floor(3 - 2.6)
      { peek: 'p', expect: [status('global', 3, 0, 2600)] },
      { advance: 600, consume: 'p', expect: near('global') }, // 2000 <= 2000: fullAt T0+4000
      { consume: 'p', expect: no('global', 0, 1000, 3, 0) },
      { advance: 5000, peek: 'p', expect: [status('global', 3, 3, 0)] },
    ],
  },
  {
    name: 'token bucket with cost 2: remaining counts whole tokens',
    plans: { p: { specs: [bucketCost2] } },
    steps: [
      { consume: 'p', expect: ok }, // fullAt T0+1000
      { consume: 'p', expect: ok }, // 1000 <= 1500: T0+2000 (not > 0.8 * 5 * 500)
      { consume: 'p', expect: no('type', 0, 500, 5, 1) }, // 2000 - 1500; floor(5 - 2000/500)
      { advance: 499, consume: 'p', expect: no('type', 0, 1, 5, 1) }, // 1501 - 1500 -> 1; floor(1.998)
      { advance: 1, consume: 'p', expect: near('type') }, // 1500 <= 1500: T0+3000 at T0+500, 2500 > 2000
      { consume: 'p', expect: no('type', 0, 1000, 5, 0) }, // 2500 - 1500
    ],
  },
  {
    name: 'plans of several tiers: all or nothing, the longest wait decides, ties go to the earliest',
    plans: {
      chat: { specs: [global5, typeOf('chat')] },
      news: { specs: [global5, typeOf('news')] },
      misc: { specs: [global5, typeOf('misc')] },
      tie: { specs: [tokenBucketSpec('type', 't:a', 1, 1), tokenBucketSpec('type', 't:b', 1, 1)] },
      longer: { specs: [tokenBucketSpec('type', 't:c', 1, 1), tokenBucketSpec('type', 't:d', 1, 0.5)] },
    },
    steps: [
      { consume: 'chat', expect: ok }, // g T0+200, chat T0+1000
      { consume: 'chat', expect: near('type') }, // g T0+400, chat T0+2000 > 1600
      { consume: 'chat', expect: no('type', 1, 1000, 2, 0) }, // chat 2000 - 1000; g waits 0
      // The refusal charged nothing: g still at T0+400 (floor(5 - 400/200) = 3).
      { peek: 'chat', expect: [status('global', 5, 3, 400), status('type', 2, 0, 2000)] },
      { consume: 'news', expect: ok }, // g T0+600, news T0+1000
      { consume: 'news', expect: near('type') }, // g T0+800 (not > 800), news T0+2000
      { consume: 'misc', expect: near('global') }, // g 800 <= 800: T0+1000 > 800, misc T0+1000
      { consume: 'misc', expect: no('global', 0, 200, 5, 0) }, // g 1000 - 800; misc 1000 <= 1000
      { consume: 'chat', expect: no('type', 1, 1000, 2, 0) }, // g waits 200, chat 1000: chat decides
      { consume: 'tie', expect: near('type') }, // 1000 > 0.8 * 1000
      { consume: 'tie', expect: no('type', 0, 1000, 1, 0) }, // both wait 1000: the earliest
      { consume: 'longer', expect: near('type') },
      { consume: 'longer', expect: no('type', 1, 2000, 1, 0) }, // c waits 1000, d 2000
      { advance: 200, consume: 'misc', expect: near('global') }, // g 800 <= 800, misc 800 <= 1000
    ],
  },
  {
    name: 'sliding log: an event leaves the window exactly one window later',
    plans: { p: { specs: [log3] } },
    steps: [
      { consume: 'p', expect: ok }, // T0
      { advance: 100, consume: 'p', expect: ok }, // T0+100
      { advance: 100, consume: 'p', expect: ok }, // T0+200
      { advance: 100, consume: 'p', expect: no('expensive', 0, 700, 3, 0) }, // T0 leaves at T0+1000
      { advance: 699, consume: 'p', expect: no('expensive', 0, 1, 3, 0) }, // T0+999: one ms early
      { advance: 1, consume: 'p', expect: ok }, // T0+1000: T0 is a window old
      { consume: 'p', expect: no('expensive', 0, 100, 3, 0) }, // T0+100 blocks until T0+1100
      { peek: 'p', expect: [status('expensive', 3, 0, 1000)] }, // newest T0+1000 + 1000
      { advance: 1100, peek: 'p', expect: [status('expensive', 3, 3, 0)] },
    ],
  },
  {
    name: 'sliding log with cost 2: the cost must fit whole',
    plans: { p: { specs: [log3cost2] } },
    steps: [
      { consume: 'p', expect: ok }, // T0, T0
      { advance: 100, consume: 'p', expect: no('expensive', 0, 900, 3, 1) }, // 2 + 2 > 3: the 1st T0 blocks
      { advance: 900, consume: 'p', expect: ok }, // T0+1000: log T0, T0+1000, T0+1000
      { consume: 'p', expect: no('expensive', 0, 1000, 3, 1) }, // the 2nd oldest (T0+1000) blocks
    ],
  },
  {
    name: 'sliding log with a limit that is not whole (made by hand): it admits the whole part',
    plans: { p: { specs: [logHalf] } },
    steps: [
      { consume: 'p', expect: ok }, // T0
      { advance: 100, consume: 'p', expect: ok }, // T0+100
      { advance: 100, consume: 'p', expect: no('expensive', 0, 800, 2.5, 0) }, // 3 > 2.5: T0 blocks
      { advance: 800, consume: 'p', expect: ok }, // T0+1000: T0 is a window old
      { consume: 'p', expect: no('expensive', 0, 100, 2.5, 0) },
    ],
  },
  {
    name: 'sliding counter: the previous window decays linearly',
    plans: { p: { specs: [counter4] } },
    steps: [
      { consume: 'p', expect: ok },
      { consume: 'p', expect: ok },
      { consume: 'p', expect: ok },
      { consume: 'p', expect: ok }, // curr 4 in [T0, T0+1000)
      // 4 + 1 > 4; next window: 4 * (1 - d/1000) + 1 <= 4 from d = 250.
      { consume: 'p', expect: no('expensive', 0, 1250, 4, 0) },
      { advance: 1250, consume: 'p', expect: ok }, // prev 4 weighs 3; curr 1
      // 4 * 0.75 + 1 + 1 > 4; 4 * (1 - d/1000) + 2 <= 4 from d = 500.
      { consume: 'p', expect: no('expensive', 0, 250, 4, 0) },
      { peek: 'p', expect: [status('expensive', 4, 0, 1750)] }, // fresh at start + 2W = T0+3000
      { advance: 250, consume: 'p', expect: ok }, // 4 * 0.5 + 1 + 1 <= 4
      { advance: 2000, peek: 'p', expect: [status('expensive', 4, 4, 0)] }, // two windows on
    ],
  },
  {
    name: 'concurrency: leases held across plans, given back by release',
    plans: {
      a: { specs: [connRate, slots2], lease: 'A' },
      b: { specs: [connRate, slots2], lease: 'B' },
      slow: { specs: [tokenBucketSpec('connection', 'cr2', 1, 0.2), concurrencySpec('concurrency', 'cc2', 1)] },
    },
    steps: [
      { consume: 'a', expect: ok }, // cr T0+1000
      { consume: 'b', expect: ok }, // cr T0+2000
      { consume: 'b', expect: no('concurrency', 1, 1000, 2, 0) }, // cr waits 0; a lease: 1000
      { release: 'b' },
      { consume: 'b', expect: ok }, // cr T0+3000
      { consume: 'a', expect: no('concurrency', 1, 1000, 2, 0) },
      { peek: 'a', expect: [status('connection', 10, 7, 3000), status('concurrency', 2, 0, 0)] },
      { release: 'a' },
      { release: 'b' },
      { peek: 'b', expect: [status('connection', 10, 7, 3000), status('concurrency', 2, 2, 0)] },
      { consume: 'slow', expect: near('connection') }, // 5000 > 0.8 * 5000
      // The bucket's 5000 ms beat the lease's 1000 ms guess.
      { advance: 10, consume: 'slow', expect: no('connection', 0, 4990, 1, 0) },
    ],
  },
  {
    name: 'a cost above the limit never fits (retryAfter is Infinity)',
    plans: {
      p: { specs: [overCost, windowSpec('expensive', 'x', 'sliding-log', 3, 1000)] },
    },
    steps: [
      { consume: 'p', expect: no('global', 0, Infinity, 2, 2) },
      { advance: 10_000, consume: 'p', expect: no('global', 0, Infinity, 2, 2) },
      { peek: 'p', expect: [status('global', 2, 2, 0), status('expensive', 3, 3, 0)] },
    ],
  },
];

/** The outcome of one step, labelled so that a failing table names the step. */
export interface StepOutcome {
  readonly step: string;
  readonly got: unknown;
}

/** The expected outcomes of a scenario, in the shape `runScenario` returns. */
export function expectedOutcomes(scenario: Scenario): StepOutcome[] {
  return scenario.steps.map((step, i) => ({
    step: label(scenario, step, i),
    got: normalise('expect' in step ? step.expect : 'released'),
  }));
}

function label(scenario: Scenario, step: Step, i: number): string {
  const what =
    'consume' in step ? `consume ${step.consume}` : 'peek' in step ? `peek ${step.peek}` : `release ${step.release}`;
  return `${scenario.name} #${i + 1}: ${what}`;
}

/** A clock the test moves by hand. */
export interface ManualClock {
  now: number;
}

/**
 * Runs a scenario against a store whose clock is `clock` (set here to T0, then moved by
 * each step's `advance`). `trackerTag` keeps runs apart on a shared Redis; each scenario
 * has its own tracker.
 */
export async function runScenario(
  store: RateLimitStore,
  clock: ManualClock,
  scenario: Scenario,
  trackerTag: string,
): Promise<StepOutcome[]> {
  clock.now = T0;
  const tracker = `ip:table/${trackerTag}/${scenario.name}`;
  const plans = new Map<string, RateLimitPlan>();
  for (const [name, def] of Object.entries(scenario.plans)) {
    const tiers = def.specs.map((spec) => Object.freeze({ key: store.key(tracker, spec.suffix), spec }));
    plans.set(name, Object.freeze({ tracker, tiers, lease: def.lease }));
  }
  const outcomes: StepOutcome[] = [];
  for (const [i, step] of scenario.steps.entries()) {
    clock.now += step.advance ?? 0;
    let got: unknown;
    if ('consume' in step) got = await store.consume(plans.get(step.consume)!);
    else if ('peek' in step) got = await store.peek(plans.get(step.peek)!);
    else {
      await store.release(plans.get(step.release)!);
      got = 'released';
    }
    outcomes.push({ step: label(scenario, step, i), got: normalise(got) });
  }
  return outcomes;
}

/** Plain objects, so that frozen constants and fresh objects compare alike (Infinity reads null). */
function normalise(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value)) as unknown;
}
