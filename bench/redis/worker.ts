/**
 * Child process: one contender of the Redis benchmark against the Redis on `port`, timed
 * turn by turn as the parent asks, so that the turns of all contenders interleave in time.
 * Usage (from run.js): worker.js <contender> <port>
 *
 * Protocol: sends `ready` once prepared; answers `{ kind: 'turn', ... }` with `turn` (a
 * `TurnResult`); exits on `{ kind: 'done' }`. Every turn starts on an empty Redis
 * (FLUSHALL), and reads Redis's command counts and CPU time (INFO, on a second connection)
 * just before and after each timed part.
 */
import { Redis } from 'ioredis';
import { performance } from 'node:perf_hooks';
import { sendToParent } from '../support/child.js';
import { DecisionTimer } from '../support/timing.js';
import {
  CLIENT_OPTIONS,
  REDIS_CONTENDERS,
  TRACKERS,
  trackerOrder,
  type Decider,
  type FloodDecider,
  type RedisContenderId,
} from './contenders.js';
import { counterDelta, parseCounters, type RedisCounters } from './redis-server.js';

/** A timed part of a turn. */
export interface Phase {
  /** Decisions that settled in the timed part. */
  decisions: number;
  decisionsPerSecond: number;
  allowed: number;
  refused: number;
  /** Calls that failed (timeout, breaker open, unexpected reply): should be 0. */
  errors: number;
  /** Redis commands during the timed part (scripts' own calls included), by command. */
  redisCommands: number;
  redisByCommand: Record<string, number>;
  /** Redis server CPU time per decision, µs. */
  redisCpuMicrosPerDecision: number;
  /** Time Redis spent executing one script (EVALSHA, its own calls included), µs, from INFO commandstats. */
  scriptMicros: number;
  /** This worker's CPU time over wall time (1 = one core). */
  workerCpuShare: number;
  /** Latency percentiles in µs (of the first `MAX_SAMPLES` decisions). */
  p50Micros?: number;
  p99Micros?: number;
  maxMicros?: number;
  /** Decisions that took longer than ours' default deadline (50 ms). */
  overDefaultDeadline?: number;
  /** Decisions answered synchronously (the block cache), and sent to Redis. */
  synchronous?: number;
  sentToRedis?: number;
}

export interface TurnResult {
  /** Decisions in flight at once, and the part's figures. */
  many?: Phase;
  one?: Phase;
  /** The flooding client's timed part. */
  flood?: Phase;
  /** Decisions the fresh flooding tracker took before its first refusal. */
  floodWarmup?: number;
}

export interface TurnCommand {
  kind: 'turn' | 'done';
  warmMs: number;
  inFlight: number;
  manyMs: number;
  oneMs: number;
  /** Untimed decisions at 1 in flight before the latency part. */
  oneWarmMs: number;
}

const [contenderId, portArg] = process.argv.slice(2);
const contender = REDIS_CONTENDERS[contenderId as RedisContenderId];
if (!contender) throw new Error(`unknown contender: ${contenderId}`);
const port = Number(portArg);

/** No loop runs past this many decisions, whatever the clock says. */
const MAX_DECISIONS = 50_000_000;
/** Latency samples kept per timed part (1 in flight: about 10^4 per second). */
const MAX_SAMPLES = 1 << 18;
const ORDER_LENGTH = 1 << 16;
/** Ours' default `commandTimeoutMs`. */
const DEFAULT_DEADLINE_MS = 50;
const ORDER_MASK = ORDER_LENGTH - 1;

const order = trackerOrder(ORDER_LENGTH, TRACKERS);
const decider = await contender.prepare(port);
const observer = new Redis({ host: '127.0.0.1', port, ...CLIENT_OPTIONS, lazyConnect: true });
await observer.connect();
let position = 0;

async function counters(): Promise<RedisCounters> {
  return parseCounters(String(await observer.call('INFO', 'commandstats', 'cpu')));
}

interface Run {
  decisions: number;
  allowed: number;
  refused: number;
  errors: number;
  elapsedMs: number;
  cpuShare: number;
  latencies: Float64Array;
  samples: number;
}

/**
 * Keeps `lanes` decisions in flight (each settled decision starts the next) for `ms`, and
 * records each decision's latency. Decisions that fail are counted apart, not as decisions.
 */
async function inFlight(target: Decider, lanes: number, ms: number): Promise<Run> {
  const latencies = new Float64Array(MAX_SAMPLES);
  let samples = 0;
  let decisions = 0;
  let allowed = 0;
  let refused = 0;
  let errors = 0;
  const cpuAtStart = process.cpuUsage();
  const start = performance.now();
  const end = start + ms;
  const lane = async (): Promise<void> => {
    let now = performance.now();
    while (now < end && decisions < MAX_DECISIONS) {
      const index = order[position++ & ORDER_MASK]!;
      let failed = false;
      try {
        const settled = await target.decide(index);
        if (target.allowed(settled)) allowed++;
        else refused++;
      } catch (error) {
        if (target.isRefusal(error)) refused++;
        else failed = true;
      }
      const after = performance.now();
      if (failed) {
        errors++;
      } else {
        decisions++;
        if (samples < MAX_SAMPLES) latencies[samples++] = after - now;
      }
      now = after;
      // A call refused synchronously (breaker open) must not starve the event loop.
      if (errors > 0 && errors % 1024 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
  };
  await Promise.all(Array.from({ length: lanes }, lane));
  const elapsedMs = performance.now() - start;
  const cpu = process.cpuUsage(cpuAtStart);
  return {
    decisions,
    allowed,
    refused,
    errors,
    elapsedMs,
    cpuShare: (cpu.user + cpu.system) / 1000 / elapsedMs,
    latencies,
    samples,
  };
}

function percentile(sorted: Float64Array, share: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(share * sorted.length))]!;
}

async function measured(run: () => Promise<Run>): Promise<Phase> {
  const before = await counters();
  const result = await run();
  const delta = counterDelta(before, await counters());
  const phase: Phase = {
    decisions: result.decisions,
    decisionsPerSecond: (result.decisions / result.elapsedMs) * 1000,
    allowed: result.allowed,
    refused: result.refused,
    errors: result.errors,
    redisCommands: delta.commands,
    redisByCommand: delta.byCommand,
    redisCpuMicrosPerDecision: delta.cpuMicros / Math.max(1, result.decisions),
    scriptMicros: delta.scriptMicros,
    workerCpuShare: result.cpuShare,
  };
  const sorted = result.latencies.subarray(0, result.samples).sort();
  phase.p50Micros = percentile(sorted, 0.5) * 1000;
  phase.p99Micros = percentile(sorted, 0.99) * 1000;
  phase.maxMicros = (sorted[sorted.length - 1] ?? Number.NaN) * 1000;
  let over = 0;
  for (let i = sorted.length - 1; i >= 0 && sorted[i]! > DEFAULT_DEADLINE_MS; i--) over++;
  phase.overDefaultDeadline = over;
  return phase;
}

/** The block-cache flood: synchronous decisions on one refused plan, timed in batches. */
async function floodCached(target: FloodDecider, command: TurnCommand): Promise<Phase> {
  let synchronous = 0;
  let sentToRedis = 0;
  const swallow = (): void => undefined;
  const timer = new DecisionTimer((n: number): number => {
    let allowed = 0;
    for (let i = 0; i < n; i++) {
      const decision = target.decide(0);
      if (decision instanceof Promise) {
        sentToRedis++;
        decision.then(swallow, swallow);
      } else {
        synchronous++;
        if ((decision as { allowed: boolean }).allowed) allowed++;
      }
    }
    return allowed;
  });
  await timer.warm(command.oneWarmMs);
  synchronous = sentToRedis = 0;
  const before = await counters();
  const round = await timer.round(command.manyMs);
  const delta = counterDelta(before, await counters());
  return {
    decisions: round.total,
    decisionsPerSecond: round.opsPerSecond,
    allowed: round.allowed,
    refused: round.total - round.allowed,
    errors: 0,
    redisCommands: delta.commands,
    redisByCommand: delta.byCommand,
    redisCpuMicrosPerDecision: delta.cpuMicros / Math.max(1, round.total),
    scriptMicros: delta.scriptMicros,
    workerCpuShare: round.cpuShare,
    synchronous,
    sentToRedis,
  };
}

async function turn(command: TurnCommand): Promise<TurnResult> {
  await observer.flushall();
  if (contender.mode === 'allowed') {
    await inFlight(decider, command.inFlight, command.warmMs);
    const many = await measured(() => inFlight(decider, command.inFlight, command.manyMs));
    await inFlight(decider, 1, command.oneWarmMs);
    const one = await measured(() => inFlight(decider, 1, command.oneMs));
    return { many, one };
  }
  const flooder = decider as FloodDecider;
  const floodWarmup = await flooder.exhaust();
  if (contenderId === 'oursFloodCached') return { flood: await floodCached(flooder, command), floodWarmup };
  // Block cache off: Redis decides every refusal, at the same concurrency as the allowed runs.
  await inFlight(decider, command.inFlight, command.warmMs);
  const flood = await measured(() => inFlight(decider, command.inFlight, command.manyMs));
  return { flood, floodWarmup };
}

// Commands are handled one at a time, in order; the parent waits for each answer.
let queue = Promise.resolve();
process.on('message', (command: TurnCommand) => {
  queue = queue.then(async () => {
    if (command.kind === 'turn') {
      await sendToParent('turn', await turn(command));
    } else {
      await decider.close();
      await observer.quit();
      process.disconnect();
    }
  });
});
await sendToParent('ready', {});
