import { nextMessage, profileFlags, startChild, stopChild } from '../support/child.js';
import { formatRate, formatRatio, median, spread, table, verdict } from '../support/stats.js';
import type { Target } from '../store/report.js';
import {
  ALLOWED_LOG,
  BENCH_DEADLINE_MS,
  REDIS_CONTENDERS,
  REFILL,
  TRACKERS,
  type RedisContenderId,
} from './contenders.js';
import { startRedis } from './redis-server.js';
import type { Phase, TurnCommand, TurnResult } from './worker.js';

/** One contender's figures, medians over its turns. */
export interface RedisRow {
  contender: RedisContenderId;
  label: string;
  /** Decisions per second at `inFlight` in flight (allowed rows) or the flood's rejections per second. */
  perSecond: number;
  perSecondRounds: number[];
  /** 1 in flight: decisions per second and latency (allowed rows only). */
  onePerSecond?: number;
  p50Micros?: number;
  p99Micros?: number;
  /** Redis commands per decision (scripts' own calls included) and Redis CPU µs per decision. */
  commandsPerDecision: number;
  redisCpuMicrosPerDecision: number;
  /** Redis's execution time of one script at 1 in flight (INFO commandstats), µs. */
  scriptMicros: number;
  workerCpuShare: number;
  /** The client process's CPU time per decision at `IN_FLIGHT` in flight, µs. */
  clientCpuMicrosPerDecision: number;
  allowedShare: number;
  errors: number;
  /** p99 latency at `IN_FLIGHT` in flight, µs, and decisions there slower than ours' default 50 ms deadline. */
  p99ManyMicros: number;
  overDefaultDeadline: number;
  /** Flood rows: Redis commands during all timed parts together, and decisions sent to Redis. */
  floodRedisCommands?: number;
  floodSentToRedis?: number;
}

export interface RedisReport {
  redisVersion: string;
  settings: TurnCommand & { processes: number; rounds: number; trackers: number };
  rows: RedisRow[];
  turns: { contender: RedisContenderId; process: number; round: number; result: TurnResult }[];
  targets: Target[];
  markdown: string;
}

const WORKER = new URL('./worker.js', import.meta.url);
/** Processes per contender; each takes one turn per round. */
const PROCESSES = 2;
const IN_FLIGHT = 256;

/**
 * Redis decisions per second and latency: a private redis-server, one worker process per
 * contender and copy, turns interleaved (the order rotating each round), FLUSHALL before
 * every turn.
 */
export async function runRedis(quick: boolean, profileDir?: string): Promise<RedisReport> {
  const rounds = quick ? 1 : 3;
  const settings = {
    kind: 'turn' as const,
    warmMs: quick ? 200 : 300,
    inFlight: IN_FLIGHT,
    manyMs: quick ? 500 : 750,
    oneWarmMs: 100,
    oneMs: quick ? 400 : 600,
  };
  const contenders = Object.keys(REDIS_CONTENDERS) as RedisContenderId[];
  const redis = await startRedis();
  console.log(
    `== Redis decisions per second (redis-server ${redis.version} on 127.0.0.1:${redis.port}; ` +
      `${PROCESSES} processes per contender x ${rounds} rounds; ${settings.manyMs} ms at ${IN_FLIGHT} in flight, ` +
      `${settings.oneMs} ms at 1 in flight per turn)`,
  );
  const owners = Array.from({ length: PROCESSES }, () => contenders).flat();
  const children = owners.map((contender, i) =>
    startChild(
      WORKER,
      [contender, String(redis.port)],
      profileFlags(profileDir, `redis-${contender}-${Math.floor(i / contenders.length) + 1}`),
    ),
  );
  const turns: RedisReport['turns'] = [];
  try {
    await Promise.all(children.map((child) => nextMessage(child, 'ready', 60_000)));
    for (let round = 0; round < rounds; round++) {
      for (let k = 0; k < children.length; k++) {
        const i = (k + round) % children.length;
        const reply = nextMessage<TurnResult>(children[i]!, 'turn', 60_000);
        children[i]!.send(settings);
        const result = await reply;
        const contender = owners[i]!;
        turns.push({ contender, process: Math.floor(i / contenders.length) + 1, round: round + 1, result });
        console.log(`  round ${round + 1} ${contender.padEnd(17)} ${describe(result)}`);
      }
    }
  } finally {
    for (const child of children) if (child.connected) child.send({ kind: 'done' });
    await Promise.all(children.map((child) => stopChild(child)));
    await redis.stop();
  }

  const rows = contenders.map((contender) =>
    summarize(
      contender,
      turns.filter((t) => t.contender === contender),
    ),
  );
  const at = (id: RedisContenderId): RedisRow => rows.find((row) => row.contender === id)!;
  const allowedIds = contenders.filter((id) => REDIS_CONTENDERS[id].mode === 'allowed');
  const base = at('baseline');
  const main = table(
    [
      'allowed-mostly decisions',
      `${IN_FLIGHT} in flight`,
      'spread',
      'vs baseline',
      `p99 at ${IN_FLIGHT}`,
      '1 in flight',
      'p50',
      'p99',
      'p50 vs baseline',
      'allowed',
    ],
    allowedIds.map((id) => {
      const row = at(id);
      return [
        row.label,
        formatRate(row.perSecond),
        spread(row.perSecondRounds),
        formatRatio(row.perSecond / base.perSecond),
        `${(row.p99ManyMicros / 1000).toFixed(1)} ms`,
        formatRate(row.onePerSecond!),
        `${row.p50Micros!.toFixed(0)} µs`,
        `${row.p99Micros!.toFixed(0)} µs`,
        formatRatio(row.p50Micros! / base.p50Micros!),
        `${(row.allowedShare * 100).toFixed(1)} %`,
      ];
    }),
  );
  const costs = table(
    [
      'cost of a decision',
      'Redis cmds/decision',
      'script µs in Redis',
      'Redis µs CPU/decision',
      'client µs CPU/decision',
      'client CPU share',
    ],
    allowedIds.map((id) => {
      const row = at(id);
      return [
        row.label,
        row.commandsPerDecision.toFixed(1),
        row.scriptMicros.toFixed(1),
        row.redisCpuMicrosPerDecision.toFixed(1),
        row.clientCpuMicrosPerDecision.toFixed(1),
        `${(row.workerCpuShare * 100).toFixed(0)} %`,
      ];
    }),
  );
  const floodIds = contenders.filter((id) => REDIS_CONTENDERS[id].mode === 'flood');
  const flood = table(
    [
      'flooding client, over its limit',
      'rejections/s',
      'spread',
      'rejected',
      'Redis commands (timed parts)',
      'Redis cmds/decision',
    ],
    floodIds.map((id) => {
      const row = at(id);
      return [
        row.label,
        formatRate(row.perSecond),
        spread(row.perSecondRounds),
        `${((1 - row.allowedShare) * 100).toFixed(1)} %`,
        String(row.floodRedisCommands),
        row.commandsPerDecision.toFixed(row.commandsPerDecision < 0.01 ? 0 : 1),
      ];
    }),
  );
  const ours = at('ours3');
  const rlf = at('rlf');
  const cached = at('oursFloodCached');
  const throughputRatio = ours.perSecond / base.perSecond;
  const p50Ratio = ours.p50Micros! / base.p50Micros!;
  const errors = rows.reduce((sum, row) => sum + row.errors, 0);
  const targets: Target[] = [
    {
      target: `ours (3-tier plan) >= 0.8x baseline decisions/s at ${IN_FLIGHT} in flight`,
      measured: formatRatio(throughputRatio),
      pass: throughputRatio >= 0.8,
    },
    {
      target: 'ours (3-tier plan) p50 at 1 in flight <= 1.2x baseline p50',
      measured: `${ours.p50Micros!.toFixed(0)} vs ${base.p50Micros!.toFixed(0)} µs = ${formatRatio(p50Ratio)}`,
      pass: p50Ratio <= 1.2,
    },
    {
      target: `ours (3-tier plan) ahead of RateLimiterRedis at ${IN_FLIGHT} in flight`,
      measured: formatRatio(ours.perSecond / rlf.perSecond),
      pass: ours.perSecond > rlf.perSecond,
    },
    {
      target: 'flooding client over its limit: 0 Redis commands (block cache)',
      measured: `${cached.floodRedisCommands} commands, ${cached.floodSentToRedis} decisions sent`,
      pass: cached.floodRedisCommands === 0 && cached.floodSentToRedis === 0,
    },
    {
      target: 'flooding client over its limit: >= 1 M rejections/s (block cache)',
      measured: formatRate(cached.perSecond),
      pass: cached.perSecond >= 1e6,
    },
    { target: 'no failed decision in any timed part', measured: `${errors} failed`, pass: errors === 0 },
  ];
  const targetTable = table(
    ['target', 'measured', 'result'],
    targets.map((t) => [t.target, t.measured, verdict(t.pass)]),
  );
  const commandsLine =
    'Script µs in Redis: the time Redis spent executing one EVALSHA (its own calls included) at 1 in flight, from ' +
    'INFO commandstats; Redis µs CPU/decision: the server process CPU time (INFO cpu) over the decisions at ' +
    `${IN_FLIGHT} in flight, reading and writing sockets included; client µs CPU/decision: the worker process's ` +
    `CPU time over its decisions at ${IN_FLIGHT} in flight. CPU times per decision depend less on what else runs ` +
    'on the machine than rates do. ' +
    'Redis commands per decision count the EVALSHA and every `redis.call` inside the script (INFO commandstats), ' +
    `per contender: ${allowedIds
      .map(
        (id) =>
          `${id} ${Object.entries(commandMix(turns, id))
            .map(([name, n]) => `${name} ${n.toFixed(2)}`)
            .join(', ')}`,
      )
      .join('; ')}.`;
  const deadlineLine =
    `Ours runs with commandTimeoutMs ${BENCH_DEADLINE_MS} here (the default is 50 ms; the baselines have no deadline). ` +
    `Decisions slower than 50 ms at ${IN_FLIGHT} in flight, all turns: ${allowedIds
      .map((id) => `${id} ${at(id).overDefaultDeadline}`)
      .join(', ')}.`;
  // Ours coalesces the socket writes of one tick (`TickWrites`); the baseline rows and
  // RateLimiterRedis write each command. The coalesced baseline puts both on one transport.
  const likeForLike = at('baselineCoalesced');
  const transportLine =
    `Like for like: ours (3-tier plan) at ${formatRatio(ours.perSecond / likeForLike.perSecond)} the baseline with ` +
    `its writes of one tick coalesced as ours are (${formatRate(likeForLike.perSecond)}; p50 ` +
    `${formatRatio(ours.p50Micros! / likeForLike.p50Micros!)}). The targets above compare with the plain baseline, ` +
    'which writes each command to its socket.';
  const text = [
    main,
    '',
    costs,
    '',
    flood,
    '',
    targetTable,
    '',
    transportLine,
    '',
    commandsLine,
    '',
    deadlineLine,
  ].join('\n');
  console.log(`\n${text}\n`);
  const markdown = [
    '## Redis store: decisions per second and latency',
    '',
    `A private redis-server ${redis.version} on 127.0.0.1 (no persistence), ioredis 6 clients with the same settings ` +
      '(no auto-pipelining, no offline queue, no retries). Each contender runs in ' +
      `${PROCESSES} processes of its own; each process takes one turn per round (${rounds} rounds, order rotating), ` +
      `and every turn starts on an empty Redis (FLUSHALL): ${settings.warmMs} ms untimed, ${settings.manyMs} ms timed ` +
      `with ${IN_FLIGHT} decisions in flight, then ${settings.oneWarmMs} ms untimed and ${settings.oneMs} ms timed ` +
      `at 1 in flight (every decision's latency recorded). Figures are medians over the ${PROCESSES * rounds} turns. ` +
      `Allowed-mostly: buckets of 10^9 tokens at ${REFILL.toExponential().replace('e+', 'x10^')}/s, ` +
      `rate-limiter-flexible 10^9 points per 60 s, over ${TRACKERS.toLocaleString('en')} trackers picked ` +
      `pseudo-randomly (same order for all), ours' sliding log ${ALLOWED_LOG.limit.toLocaleString('en')} events per ` +
      `${ALLOWED_LOG.windowMs} ms; plans built once per tracker (createPlan). The flood rows: one tracker driven over ` +
      "the library's default limits through Redis, then timed (the block cache answers synchronously; with the cache " +
      `off, Redis decides each refusal at ${IN_FLIGHT} in flight). Two cores: Redis and the client process get about ` +
      'one each.',
    '',
    text,
    '',
  ].join('\n');
  return {
    redisVersion: redis.version,
    settings: { ...settings, processes: PROCESSES, rounds, trackers: TRACKERS },
    rows,
    turns,
    targets,
    markdown,
  };
}

function describe(result: TurnResult): string {
  const phase = (name: string, p: Phase | undefined): string =>
    p === undefined
      ? ''
      : `${name} ${formatRate(p.decisionsPerSecond).padStart(9)}` +
        (p.p50Micros === undefined ? '' : ` p50 ${p.p50Micros.toFixed(0)} µs p99 ${p.p99Micros!.toFixed(0)} µs`) +
        (p.overDefaultDeadline ? ` ${p.overDefaultDeadline} over 50 ms` : '') +
        ` ${(p.redisCommands / Math.max(1, p.decisions)).toFixed(1)} cmds/dec` +
        (p.errors > 0 ? ` ${p.errors} FAILED` : '');
  return [phase(`${IN_FLIGHT} in flight`, result.many), phase('1 in flight', result.one), phase('flood', result.flood)]
    .filter(Boolean)
    .join('  ');
}

function summarize(contender: RedisContenderId, turns: RedisReport['turns']): RedisRow {
  const { label, mode } = REDIS_CONTENDERS[contender];
  const main = turns.map((t) => (mode === 'allowed' ? t.result.many! : t.result.flood!));
  const ones = turns.map((t) => t.result.one).filter((p): p is Phase => p !== undefined);
  const all = [...main, ...ones];
  const row: RedisRow = {
    contender,
    label,
    perSecond: median(main.map((p) => p.decisionsPerSecond)),
    perSecondRounds: main.map((p) => Math.round(p.decisionsPerSecond)),
    commandsPerDecision: median(main.map((p) => p.redisCommands / Math.max(1, p.decisions))),
    redisCpuMicrosPerDecision: median(main.map((p) => p.redisCpuMicrosPerDecision)),
    scriptMicros: median((ones.length > 0 ? ones : main).map((p) => p.scriptMicros)),
    workerCpuShare: median(main.map((p) => p.workerCpuShare)),
    clientCpuMicrosPerDecision: median(main.map((p) => (p.workerCpuShare / p.decisionsPerSecond) * 1e6)),
    allowedShare: sum(all.map((p) => p.allowed)) / Math.max(1, sum(all.map((p) => p.decisions))),
    errors: sum(all.map((p) => p.errors)),
    p99ManyMicros: median(main.map((p) => p.p99Micros ?? Number.NaN)),
    overDefaultDeadline: sum(main.map((p) => p.overDefaultDeadline ?? 0)),
  };
  if (ones.length > 0) {
    row.onePerSecond = median(ones.map((p) => p.decisionsPerSecond));
    row.p50Micros = median(ones.map((p) => p.p50Micros!));
    row.p99Micros = median(ones.map((p) => p.p99Micros!));
  }
  if (mode === 'flood') {
    row.floodRedisCommands = sum(main.map((p) => p.redisCommands));
    row.floodSentToRedis = sum(main.map((p) => p.sentToRedis ?? p.decisions));
  }
  return row;
}

/** Redis commands per decision at `IN_FLIGHT` in flight, by command, medians over turns. */
function commandMix(turns: RedisReport['turns'], contender: RedisContenderId): Record<string, number> {
  const phases = turns.filter((t) => t.contender === contender).map((t) => t.result.many!);
  const names = new Set(phases.flatMap((p) => Object.keys(p.redisByCommand)));
  return Object.fromEntries(
    [...names].map((name) => [
      name,
      median(phases.map((p) => (p.redisByCommand[name] ?? 0) / Math.max(1, p.decisions))),
    ]),
  );
}

function sum(values: readonly number[]): number {
  return values.reduce((total, value) => total + value, 0);
}
