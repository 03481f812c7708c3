import { nextMessage, profileFlags, startChild, stopChild } from '../support/child.js';
import { formatRate, formatRatio, median, spread, table, verdict } from '../support/stats.js';
import type { Target } from '../store/report.js';
import { parseCounters, rawCommand, startRedis, counterDelta, type RedisServer } from '../redis/redis-server.js';
import { NO_PRETENURING, REDIS_VARIANTS, VARIANTS, type GatewayVariant, type VariantId } from './apps.js';
import type { LoadResult } from './load.js';

/** What one run measured, whichever gateway part ran it. */
export interface MeasuredRun extends LoadResult {
  /** Server CPU time per echoed message in the measured window, in microseconds. */
  serverCpuMicrosPerMessage: number;
  /** Redis commands per echoed message in the measured window (Redis variants only). */
  redisCommandsPerMessage?: number;
}

/** One measured run of one variant. */
export interface GatewayRun extends MeasuredRun {
  variant: VariantId;
  round: number;
}

/** The load's shape: the same for every gateway part (`ws` and socket.io). */
export interface LoadShape {
  clients: number;
  inFlight: number;
  warmupMs: number;
  durationMs: number;
  rounds: number;
}

/** A gateway part's two child scripts, and the URL its load connects to. */
export interface GatewayScripts {
  /** Serves one variant: `server.js <variant>`, speaking `serveMeasured`'s protocol. */
  server: URL;
  /** `load.js <url> <clients> <inFlight> <warmupMs> <durationMs> <addresses>`, sending a `LoadResult`. */
  load: URL;
  url: (port: number) => string;
  /** Prefix of the CPU profiles' file names. */
  profilePrefix: string;
}

export interface GatewayReport {
  load: LoadShape;
  runs: GatewayRun[];
  medians: Record<VariantId, number>;
  targets: Target[];
  markdown: string;
}

const SCRIPTS: GatewayScripts = {
  server: new URL('./server.js', import.meta.url),
  load: new URL('./load.js', import.meta.url),
  url: (port) => `ws://127.0.0.1:${port}`,
  profilePrefix: 'gateway',
};
const CLIENTS = 64;
const IN_FLIGHT = 32;

/** The load of every gateway part: 64 clients x 32 in flight, 1 s + 5 s, 3 rounds (or shortened). */
export function loadShape(quick: boolean): LoadShape {
  return quick
    ? { clients: CLIENTS, inFlight: IN_FLIGHT, warmupMs: 500, durationMs: 2000, rounds: 1 }
    : { clients: CLIENTS, inFlight: IN_FLIGHT, warmupMs: 1000, durationMs: 5000, rounds: 3 };
}

/** Each round's order of the variants: all of them, rotated by one more each round. */
export function roundOrder<V>(variants: readonly V[], round: number): V[] {
  return variants.map((_, i) => variants[(i + round) % variants.length]!);
}

/** A run's console line. */
export function describeRun(round: number, variant: string, run: MeasuredRun): string {
  return (
    `  round ${round + 1} ${variant.padEnd(12)} ${formatRate(run.echoesPerSecond).padStart(10)}  ` +
    `server ${run.serverCpuMicrosPerMessage.toFixed(1)} µs CPU/msg, load process ${(run.loadCpuShare * 100).toFixed(0)} % of a core` +
    (run.otherFrames > 0 ? `, ${run.otherFrames} non-echo frames!` : '') +
    (run.closedEarly > 0 ? `, ${run.closedEarly} sockets closed early!` : '') +
    (run.redisCommandsPerMessage !== undefined ? `, ${run.redisCommandsPerMessage.toFixed(2)} Redis cmds/msg` : '')
  );
}

/**
 * Echo throughput of each gateway variant: a fresh server process per run, the load from a
 * separate process; variants alternate within a round, the order rotates between rounds.
 */
export async function runGateway(quick: boolean, profileDir?: string): Promise<GatewayReport> {
  const load = loadShape(quick);
  const variants = Object.keys(VARIANTS) as VariantId[];
  console.log(
    `== Echo gateway throughput (${load.clients} clients x ${load.inFlight} in flight, ` +
      `${load.warmupMs} ms warm-up + ${load.durationMs} ms, ${load.rounds} rounds)`,
  );
  const runs: GatewayRun[] = [];
  // The Redis variants share one redis-server, started for this part and stopped after it.
  const redis = await startRedis();
  process.env.BENCH_REDIS_URL = `redis://127.0.0.1:${redis.port}`;
  try {
    await measureRounds(variants, load, profileDir, redis, runs);
  } finally {
    await redis.stop();
  }
  return reportGateway(variants, load, runs);
}

async function measureRounds(
  variants: VariantId[],
  load: LoadShape,
  profileDir: string | undefined,
  redis: RedisServer,
  runs: GatewayRun[],
): Promise<void> {
  for (let round = 0; round < load.rounds; round++) {
    for (const variant of roundOrder(variants, round)) {
      const measured = await measureRun(SCRIPTS, variant, round, load, {
        profileDir,
        addresses: VARIANTS[variant].clientAddresses,
        redis: REDIS_VARIANTS.includes(variant) ? redis : undefined,
        nodeFlags: (VARIANTS[variant] as GatewayVariant).nodeFlags,
      });
      const run: GatewayRun = { ...measured, variant, round };
      runs.push(run);
      console.log(describeRun(round, variant, run));
    }
  }
}

function reportGateway(variants: VariantId[], load: LoadShape, runs: GatewayRun[]): GatewayReport {
  const of = (variant: VariantId): GatewayRun[] => runs.filter((run) => run.variant === variant);
  const medians = Object.fromEntries(
    variants.map((variant) => [variant, median(of(variant).map((run) => run.echoesPerSecond))]),
  ) as Record<VariantId, number>;
  const text = table(
    ['variant', 'echoes/s (median)', 'spread', 'server µs CPU/msg', 'Redis cmds/msg', 'vs unguarded', 'vs no-op guard'],
    variants.map((variant) => [
      VARIANTS[variant].label,
      formatRate(medians[variant]),
      spread(of(variant).map((run) => run.echoesPerSecond)),
      median(of(variant).map((run) => run.serverCpuMicrosPerMessage)).toFixed(1),
      REDIS_VARIANTS.includes(variant)
        ? median(of(variant).map((run) => run.redisCommandsPerMessage ?? 0)).toFixed(2)
        : '',
      formatRatio(medians[variant] / medians.unguarded),
      formatRatio(medians[variant] / medians.noop),
    ]),
  );
  const ratio = medians.ours / medians.unguarded;
  const rejected = of('ours').reduce((sum, run) => sum + run.otherFrames, 0);
  const vsUnguarded = (variant: VariantId): string => (medians[variant] / medians.unguarded).toFixed(2);
  const redisRatio = medians.oursRedisReserveTtl / medians.unguarded;
  const noPretenuring = medians.oursRedisReserveTtlStockNoPretenure / medians.unguardedNoPretenure;
  const redisRejected = REDIS_VARIANTS.flatMap(of).reduce((sum, run) => sum + run.otherFrames, 0);
  const targets: Target[] = [
    {
      target: 'Redis store, tracker ip, 64 addresses, with reservations: guarded / unguarded >= 0.8',
      measured:
        `batch 1000: ${redisRatio.toFixed(2)} (batch 64: ${vsUnguarded('oursRedisReserve')}; ` +
        `buckets refilling 4,000/s, batch 4000: ${vsUnguarded('oursRedisReserveFast')}; ` +
        `buckets refilling 250/s, spending their burst, batch 250: ${vsUnguarded('oursRedisReserveBurst')}; ` +
        `without reservations: ${vsUnguarded('oursRedis')}; guard only on the stock WsAdapter, batch 1000: ` +
        `${vsUnguarded('oursRedisReserveTtlStock')}, and with ${NO_PRETENURING} against unguarded with it: ` +
        `${noPretenuring.toFixed(2)})`,
      pass: redisRatio >= 0.8,
    },
    {
      target: 'no message refused in the Redis runs',
      measured: `${redisRejected} refused`,
      pass: redisRejected === 0,
    },
    { target: 'guarded / unguarded >= 0.85', measured: ratio.toFixed(2), pass: ratio >= 0.85 },
    { target: 'guarded / unguarded >= 0.95 (aim)', measured: ratio.toFixed(2), pass: ratio >= 0.95 },
    { target: 'no message refused in the guarded runs', measured: `${rejected} refused`, pass: rejected === 0 },
  ];
  const targetTable = table(
    ['target', 'measured', 'result'],
    targets.map((t) => [t.target, t.measured, verdict(t.pass)]),
  );
  console.log(`\n${text}\n\n${targetTable}\n`);
  const markdown = [
    '## Guarded vs unguarded echo gateway',
    '',
    `NestJS (platform-express + platform-ws \`WsAdapter\`, or \`WsRateLimitAdapter\` where the variant says so) ` +
      `echo gateway on 127.0.0.1; load from a separate ` +
      `process: ${load.clients} \`ws\` clients, ${load.inFlight} messages in flight each, ${load.warmupMs} ms ` +
      `warm-up then ${load.durationMs} ms counted. A fresh server process per run; ${load.rounds} rounds, ` +
      'variants alternating (order rotated each round); medians. Limits are high enough that nothing is ' +
      'refused, so the difference is the cost of the guard. Two cores: server and load get about one each.',
    '',
    text,
    '',
    targetTable,
    '',
  ].join('\n');
  return { load, runs, medians, targets, markdown };
}

/**
 * One run: a fresh server process serving `variant`, then the load process; the server's
 * CPU time is taken over the load's counted window (and Redis's command count, given a Redis).
 */
export async function measureRun(
  scripts: GatewayScripts,
  variant: string,
  round: number,
  load: Omit<LoadShape, 'rounds'>,
  options: {
    profileDir: string | undefined;
    addresses: number;
    redis?: RedisServer | undefined;
    /** node's own flags for the server process. */
    nodeFlags?: readonly string[] | undefined;
  },
): Promise<MeasuredRun> {
  const { profileDir, redis } = options;
  const server = startChild(
    scripts.server,
    [variant],
    [
      ...profileFlags(profileDir, `${scripts.profilePrefix}-${variant}-round${round + 1}`),
      ...(options.nodeFlags ?? []),
    ],
  );
  const loader = { child: undefined as ReturnType<typeof startChild> | undefined };
  try {
    const { port } = await nextMessage<{ port: number }>(server, 'ready', 30_000);
    const child = startChild(scripts.load, [
      scripts.url(port),
      String(load.clients),
      String(load.inFlight),
      String(load.warmupMs),
      String(load.durationMs),
      String(options.addresses),
    ]);
    loader.child = child;
    const resultPromise = nextMessage<LoadResult>(child, 'result', 30_000 + load.warmupMs + load.durationMs);
    await nextMessage(child, 'measuring', 30_000 + load.warmupMs);
    const counters = () => rawCommand(redis!.port, 'INFO commandstats').then(parseCounters);
    const before = redis ? await counters() : undefined;
    server.send({ kind: 'mark-start' });
    const result = await resultPromise;
    const redisCommands = before ? counterDelta(before, await counters()).commands : undefined;
    const cpuPromise = nextMessage<{ cpuMicros: number }>(server, 'cpu', 10_000);
    server.send({ kind: 'mark-end' });
    const { cpuMicros } = await cpuPromise;
    return {
      ...result,
      serverCpuMicrosPerMessage: cpuMicros / Math.max(1, result.echoes),
      ...(redisCommands === undefined ? {} : { redisCommandsPerMessage: redisCommands / Math.max(1, result.echoes) }),
    };
  } finally {
    if (server.connected) server.send({ kind: 'stop' });
    await Promise.all([stopChild(server), loader.child ? stopChild(loader.child) : Promise.resolve()]);
  }
}
