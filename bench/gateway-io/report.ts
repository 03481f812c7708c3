import { formatRate, formatRatio, median, spread, table, verdict } from '../support/stats.js';
import type { Target } from '../store/report.js';
import {
  describeRun,
  loadShape,
  measureRun,
  roundOrder,
  type GatewayScripts,
  type LoadShape,
  type MeasuredRun,
} from '../gateway/report.js';
import { IO_LIMITS, IO_VARIANTS, type IoVariantId } from './apps.js';

/** One measured run of one socket.io variant. */
export interface IoGatewayRun extends MeasuredRun {
  variant: IoVariantId;
  round: number;
}

export interface IoGatewayReport {
  load: LoadShape;
  runs: IoGatewayRun[];
  medians: Record<IoVariantId, number>;
  targets: Target[];
  markdown: string;
}

const SCRIPTS: GatewayScripts = {
  server: new URL('./server.js', import.meta.url),
  load: new URL('./load.js', import.meta.url),
  url: (port) => `http://127.0.0.1:${port}`,
  profilePrefix: 'gateway-io',
};
/** Issue 11: the guarded socket.io gateway keeps at least this share of the unguarded one's echoes. */
const TARGET = 0.9;

/**
 * The `gateway` part on socket.io: the same echo gateway, load shape and rounds, served by
 * NestJS's socket.io driver; socket.io-client sockets on the WebSocket transport.
 */
export async function runGatewayIo(quick: boolean, profileDir?: string): Promise<IoGatewayReport> {
  const load = loadShape(quick);
  const variants = Object.keys(IO_VARIANTS) as IoVariantId[];
  console.log(
    `== socket.io echo gateway throughput (${load.clients} socket.io-client sockets x ${load.inFlight} in flight, ` +
      `${load.warmupMs} ms warm-up + ${load.durationMs} ms, ${load.rounds} rounds)`,
  );
  const runs: IoGatewayRun[] = [];
  for (let round = 0; round < load.rounds; round++) {
    for (const variant of roundOrder(variants, round)) {
      const measured = await measureRun(SCRIPTS, variant, round, load, { profileDir, addresses: 1 });
      const run: IoGatewayRun = { ...measured, variant, round };
      runs.push(run);
      console.log(describeRun(round, variant, run));
    }
  }
  return reportGatewayIo(variants, load, runs);
}

function reportGatewayIo(variants: IoVariantId[], load: LoadShape, runs: IoGatewayRun[]): IoGatewayReport {
  const of = (variant: IoVariantId): IoGatewayRun[] => runs.filter((run) => run.variant === variant);
  const medianOf = (variant: IoVariantId, figure: (run: IoGatewayRun) => number): number =>
    median(of(variant).map(figure));
  const medians = Object.fromEntries(
    variants.map((variant) => [variant, medianOf(variant, (run) => run.echoesPerSecond)]),
  ) as Record<IoVariantId, number>;
  const cpu = (variant: IoVariantId): number => medianOf(variant, (run) => run.serverCpuMicrosPerMessage);
  const text = table(
    [
      'variant',
      'echoes/s (median)',
      'spread',
      'server µs CPU/msg',
      'load CPU share',
      'vs unguarded',
      'vs no-op guard',
      'CPU/msg vs unguarded',
    ],
    variants.map((variant) => [
      IO_VARIANTS[variant].label,
      formatRate(medians[variant]),
      spread(of(variant).map((run) => run.echoesPerSecond)),
      cpu(variant).toFixed(1),
      `${(medianOf(variant, (run) => run.loadCpuShare) * 100).toFixed(0)} %`,
      formatRatio(medians[variant] / medians.unguarded),
      formatRatio(medians[variant] / medians.noop),
      formatRatio(cpu(variant) / cpu('unguarded')),
    ]),
  );
  const ratio = medians.ours / medians.unguarded;
  const perRound = of('ours')
    .map((run) => {
      const unguarded = of('unguarded').find((other) => other.round === run.round);
      return unguarded ? (run.echoesPerSecond / unguarded.echoesPerSecond).toFixed(2) : 'n/a';
    })
    .join(', ');
  const refused = runs.reduce((sum, run) => sum + run.otherFrames, 0);
  const closedEarly = runs.reduce((sum, run) => sum + run.closedEarly, 0);
  const targets: Target[] = [
    {
      target: `socket.io: WsRateLimitIoAdapter + @WsRateLimit() / unguarded >= ${TARGET}`,
      measured: `${ratio.toFixed(2)} (per round: ${perRound})`,
      pass: ratio >= TARGET,
    },
    { target: 'socket.io: no event other than echo in any run', measured: `${refused} others`, pass: refused === 0 },
    { target: 'socket.io: no socket closed early', measured: `${closedEarly} closed`, pass: closedEarly === 0 },
  ];
  const targetTable = table(
    ['target', 'measured', 'result'],
    targets.map((t) => [t.target, t.measured, verdict(t.pass)]),
  );
  console.log(`\n${text}\n\n${targetTable}\n`);
  const markdown = [
    '## Guarded vs unguarded echo gateway on socket.io',
    '',
    `The \`gateway\` part's echo gateway on NestJS's socket.io driver (platform-express + ` +
      `\`@nestjs/platform-socket.io\`) on 127.0.0.1; load from a separate process: ${load.clients} ` +
      `socket.io-client sockets (WebSocket transport only, one Engine.IO connection each), ${load.inFlight} ` +
      `\`echo\` events in flight each, ${load.warmupMs} ms warm-up then ${load.durationMs} ms counted. A fresh ` +
      `server process per run; ${load.rounds} rounds, variants alternating (order rotated each round); medians. ` +
      `Our module: \`${JSON.stringify(IO_LIMITS)}\`, nothing is refused, so the difference is the limiter's ` +
      'cost. The load CPU share shows whether the load process, not the server, was the bottleneck.',
    '',
    text,
    '',
    targetTable,
    '',
  ].join('\n');
  return { load, runs, medians, targets, markdown };
}
