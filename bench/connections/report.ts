import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { nextMessage, profileFlags, startChild, stopChild } from '../support/child.js';
import { formatRate, formatRatio, median, spread, table, verdict } from '../support/stats.js';
import type { Target } from '../store/report.js';
import { SETTINGS, VARIANTS, type VariantId } from './apps.js';
import type { ConnectionLoadResult } from './load.js';

/** One measured run of one variant. */
export interface ConnectionRun extends ConnectionLoadResult {
  variant: VariantId;
  round: number;
  /** Server CPU time per handshake (accepted or refused) in the measured window, µs. */
  serverCpuMicrosPerHandshake: number;
  /** Server CPU time over wall time in the window (1 = one core). */
  serverCpuShare: number;
}

export interface ConnectionsReport {
  load: { inFlight: number; warmupMs: number; durationMs: number; rounds: number };
  settings: typeof SETTINGS;
  runs: ConnectionRun[];
  medians: Record<VariantId, { handshakesPerSecond: number; serverCpuMicrosPerHandshake: number }>;
  targets: Target[];
  markdown: string;
}

const SERVER = new URL('./server.js', import.meta.url);
const ROOT = new URL('../../../', import.meta.url);
const LOAD = new URL('./load.js', import.meta.url);
const IN_FLIGHT = 32;

/**
 * Connection acceptance per second: a fresh server process per run, the load from a
 * separate process; variants alternate within a round, the order rotates between rounds.
 */
export async function runConnections(quick: boolean, profileDir?: string): Promise<ConnectionsReport> {
  const load = quick
    ? { inFlight: IN_FLIGHT, warmupMs: 500, durationMs: 1500, rounds: 1 }
    : { inFlight: IN_FLIGHT, warmupMs: 750, durationMs: 3000, rounds: 3 };
  const variants = Object.keys(VARIANTS) as VariantId[];
  console.log(
    `== WebSocket connections per second (${load.inFlight} handshakes in flight, open then close; ` +
      `${load.warmupMs} ms warm-up + ${load.durationMs} ms, ${load.rounds} rounds)`,
  );
  const runs: ConnectionRun[] = [];
  for (let round = 0; round < load.rounds; round++) {
    const order = variants.map((_, i) => variants[(i + round) % variants.length]!);
    for (const variant of order) {
      const run = await measure(variant, round, load, profileDir);
      runs.push(run);
      console.log(
        `  round ${round + 1} ${variant.padEnd(9)} accepted ${formatRate(run.acceptedPerSecond).padStart(9)} ` +
          `refused ${formatRate(run.refusedPerSecond).padStart(9)}  server ${run.serverCpuMicrosPerHandshake.toFixed(0)} µs ` +
          `CPU/handshake (${(run.serverCpuShare * 100).toFixed(0)} % of a core), load process ` +
          `${(run.loadCpuShare * 100).toFixed(0)} %; response p50 ${run.responseP50Ms.toFixed(1)} ms, ` +
          `p99 ${run.responseP99Ms.toFixed(1)} ms, max ${run.responseMaxMs.toFixed(0)} ms` +
          (run.slowResponses > 0 ? `, ${run.slowResponses} over 200 ms` : '') +
          (run.other + run.errors > 0 ? `, ${run.other + run.errors} other outcomes! (${run.firstProblem})` : ''),
      );
    }
  }
  const of = (variant: VariantId): ConnectionRun[] => runs.filter((run) => run.variant === variant);
  const handshakes = (run: ConnectionRun): number =>
    VARIANTS[run.variant].expect === 'accept' ? run.acceptedPerSecond : run.refusedPerSecond;
  const medians = Object.fromEntries(
    variants.map((variant) => [
      variant,
      {
        handshakesPerSecond: median(of(variant).map(handshakes)),
        serverCpuMicrosPerHandshake: median(of(variant).map((run) => run.serverCpuMicrosPerHandshake)),
      },
    ]),
  ) as ConnectionsReport['medians'];
  const plain = medians.plain;
  const text = table(
    [
      'variant',
      'handshakes/s (median)',
      'answer',
      'spread',
      'server µs CPU/handshake',
      'server CPU',
      'load CPU',
      'vs plain (rate)',
      'vs plain (CPU)',
    ],
    variants.map((variant) => {
      const own = of(variant);
      return [
        VARIANTS[variant].label,
        formatRate(medians[variant].handshakesPerSecond),
        VARIANTS[variant].expect === 'accept' ? '101' : '429',
        spread(own.map(handshakes)),
        medians[variant].serverCpuMicrosPerHandshake.toFixed(0),
        `${(median(own.map((run) => run.serverCpuShare)) * 100).toFixed(0)} %`,
        `${(median(own.map((run) => run.loadCpuShare)) * 100).toFixed(0)} %`,
        formatRatio(medians[variant].handshakesPerSecond / plain.handshakesPerSecond),
        formatRatio(medians[variant].serverCpuMicrosPerHandshake / plain.serverCpuMicrosPerHandshake),
      ];
    }),
  );
  const ratio = medians.ours.handshakesPerSecond / plain.handshakesPerSecond;
  const refusalShare =
    medians.refusing.serverCpuMicrosPerHandshake / Math.max(1e-9, medians.ours.serverCpuMicrosPerHandshake);
  const acceptedWhileRefusing = of('refusing').reduce((sum, run) => sum + run.accepted, 0);
  const refusedWhileAccepting = [...of('plain'), ...of('ours')].reduce((sum, run) => sum + run.refused, 0);
  const problems = runs.reduce((sum, run) => sum + run.other + run.errors, 0);
  const targets: Target[] = [
    {
      target: 'WsRateLimitAdapter accepts >= 0.9x the plain adapter',
      measured: formatRatio(ratio),
      pass: ratio >= 0.9,
    },
    {
      target: 'check: a refused handshake costs the server less than an accepted connection',
      measured: `${medians.refusing.serverCpuMicrosPerHandshake.toFixed(0)} vs ${medians.ours.serverCpuMicrosPerHandshake.toFixed(0)} µs = ${formatRatio(refusalShare)}`,
      pass: refusalShare < 1,
    },
    {
      target: 'check: refusals are 429 with Retry-After, nothing accepted',
      measured: `${acceptedWhileRefusing} accepted, Retry-After ${of('refusing').every((run) => run.retryAfterSeen) ? 'present' : 'MISSING'}`,
      pass: acceptedWhileRefusing === 0 && of('refusing').every((run) => run.retryAfterSeen),
    },
    {
      target: 'check: no refusal, reset or timeout in the accepting runs',
      measured: `${refusedWhileAccepting} refused, ${problems} other`,
      pass: refusedWhileAccepting === 0 && problems === 0,
    },
  ];
  const targetTable = table(
    ['target', 'measured', 'result'],
    targets.map((t) => [t.target, t.measured, verdict(t.pass)]),
  );
  console.log(`\n${text}\n\n${targetTable}\n`);
  const markdown = [
    '## WebSocket connections per second, and the cost of a refused handshake',
    '',
    'A NestJS app (platform-express) with one empty gateway on 127.0.0.1, in a fresh process per run; load from ' +
      `a separate process keeping ${load.inFlight} handshakes in flight from 127.0.0.1: each opens a TCP ` +
      'connection, sends an upgrade request and, on 101, closes the WebSocket cleanly (close frame both ways), ' +
      `then starts over; ${load.warmupMs} ms warm-up then ${load.durationMs} ms counted; ${load.rounds} rounds, ` +
      'variants alternating (order rotated each round); medians. The load speaks the protocol by hand (fixed ' +
      'request, fixed close frame) so that it costs little CPU per connection. Our variants set ' +
      `\`connection: ${JSON.stringify(SETTINGS.ours.connection)}\` and \`maxPendingHandshakesPerIp: 0\` ` +
      'explicitly: the defaults (5 burst and 1/s per IP; 10 pending handshakes per IP) would refuse one loopback client. ' +
      'Heartbeat and handshake timeout stay at their defaults. The refusing variant allows 1 connection per 1,000 s ' +
      '(`connection: { capacity: 1, refillRate: 0.001 }`): every handshake in the window is answered 429 with ' +
      'Retry-After before the upgrade. Server CPU per handshake is the server process CPU time in the window over ' +
      `the handshakes answered. ${wsNote()}`,
    '',
    text,
    '',
    targetTable,
    '',
  ].join('\n');
  return { load, settings: SETTINGS, runs, medians, targets, markdown };
}

async function measure(
  variant: VariantId,
  round: number,
  load: { inFlight: number; warmupMs: number; durationMs: number },
  profileDir: string | undefined,
): Promise<ConnectionRun> {
  const server = startChild(SERVER, [variant], profileFlags(profileDir, `connections-${variant}-round${round + 1}`));
  const loader = { child: undefined as ReturnType<typeof startChild> | undefined };
  try {
    const { port } = await nextMessage<{ port: number }>(server, 'ready', 30_000);
    const child = startChild(LOAD, [
      String(port),
      String(load.inFlight),
      String(load.warmupMs),
      String(load.durationMs),
    ]);
    loader.child = child;
    const resultPromise = nextMessage<ConnectionLoadResult>(child, 'result', 30_000 + load.warmupMs + load.durationMs);
    await nextMessage(child, 'measuring', 30_000 + load.warmupMs);
    server.send({ kind: 'mark-start' });
    const result = await resultPromise;
    const cpuPromise = nextMessage<{ cpuMicros: number }>(server, 'cpu', 10_000);
    server.send({ kind: 'mark-end' });
    const { cpuMicros } = await cpuPromise;
    const answered = result.accepted + result.refused;
    return {
      ...result,
      variant,
      round,
      serverCpuMicrosPerHandshake: cpuMicros / Math.max(1, answered),
      serverCpuShare: cpuMicros / 1000 / load.durationMs,
    };
  } finally {
    if (server.connected) server.send({ kind: 'stop' });
    await Promise.all([stopChild(server), loader.child ? stopChild(loader.child) : Promise.resolve()]);
  }
}

/** The version of a `ws` copy under node_modules, or undefined. */
function wsVersion(path: string): string | undefined {
  try {
    const file = fileURLToPath(new URL(`node_modules/${path}/package.json`, ROOT));
    return (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version;
  } catch {
    return undefined;
  }
}

/** Which `ws` each adapter runs on: @nestjs/platform-ws may bundle its own copy. */
function wsNote(): string {
  const bundled = wsVersion('@nestjs/platform-ws/node_modules/ws');
  const own = wsVersion('ws') ?? 'unknown';
  return bundled === undefined
    ? `Both adapters run on the application's \`ws\` ${own}.`
    : `The stock adapter runs on the \`ws\` that @nestjs/platform-ws bundles (${bundled}), ` +
        `ours on the application's \`ws\` (${own}).`;
}
