import { execFileSync, fork } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { nextMessage, stopChild } from '../support/child.js';
import { table, verdict } from '../support/stats.js';
import type { Target } from '../store/report.js';
import type { ServerCounts, TrackerCounts } from './server.js';
import { lineChart } from './svg.js';

/** What the figure shows, second by second, and the run that produced it. */
export interface FigureReport {
  timeline: { seconds: number; floodFrom: number; floodTo: number; floodRate: number; normalRate: number };
  env: Record<string, string>;
  flooder: TrackerCounts & { tracker: string; sent: number; acks: number; limitedFrames: number };
  normal: TrackerCounts & { tracker: string; sent: number; acks: number; limitedFrames: number };
  violations: number;
  disconnects: number;
  svgPath: string;
  targets: Target[];
  markdown: string;
}

const ROOT = new URL('../../../', import.meta.url);
const SERVER = new URL('./server.js', import.meta.url);
const SVG = new URL('docs/flood.svg', ROOT);
/** Where `--quick` writes its shorter figure instead, so that it is never committed by mistake. */
const QUICK_SVG = new URL('.tmp/flood-quick.svg', ROOT);
/** Rates of the two clients, messages per second. */
const FLOOD_RATE = 100;
const NORMAL_RATE = 2;
/**
 * The sample's limiter settings for the figure. The default violation threshold (10 in
 * 60 s) would close the flooder with 1008 within its first second of flooding; raised so
 * that the figure shows the limiter's steady state.
 */
const ENV = { WS_RATE_LIMIT_MAX_VIOLATIONS: '1000000' };

/**
 * Runs the sample app with WsRateLimitAdapter in a child process; one client floods `chat`
 * while another chats normally; plots allowed and rejected decisions per second, counted
 * on the server from `WsRateLimitService.events$`, and writes docs/flood.svg.
 */
export async function runFigure(quick: boolean): Promise<FigureReport> {
  const timeline = quick
    ? { seconds: 8, floodFrom: 1, floodTo: 5, floodRate: FLOOD_RATE, normalRate: NORMAL_RATE }
    : { seconds: 15, floodFrom: 2, floodTo: 12, floodRate: FLOOD_RATE, normalRate: NORMAL_RATE };
  console.log(
    `== Flood figure (sample app; one client floods chat at ${FLOOD_RATE}/s from ${timeline.floodFrom} s to ` +
      `${timeline.floodTo} s, another chats at ${NORMAL_RATE}/s; ${timeline.seconds} s)`,
  );
  ensureSampleBuilt();
  const server = fork(SERVER, [String(timeline.seconds)], {
    stdio: 'inherit',
    env: { ...withoutLimiterVariables(process.env), ...ENV },
  });
  const clients: Client[] = [];
  try {
    const { port } = await nextMessage<{ port: number }>(server, 'ready', 30_000);
    const url = `ws://127.0.0.1:${port}`;
    const flooder = await openClient(url);
    const normal = await openClient(url);
    clients.push(flooder, normal);
    // Second 0, on a clock both processes read alike, a little ahead so both are ready for it.
    const at = performance.timeOrigin + performance.now() + 200;
    const started = nextMessage(server, 'started', 10_000);
    server.send({ kind: 'mark-start', at });
    await started;
    await drive(timeline, at - performance.timeOrigin, flooder, normal);
    // Answers to the last messages.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const countsReply = nextMessage<ServerCounts>(server, 'counts', 10_000);
    server.send({ kind: 'report' });
    const counts = await countsReply;
    const empty = (): TrackerCounts => ({
      allowed: new Array<number>(timeline.seconds).fill(0),
      rejected: new Array<number>(timeline.seconds).fill(0),
      tiers: {},
    });
    const of = (client: Client) => ({
      tracker: client.tracker,
      sent: client.sent,
      acks: client.acks,
      limitedFrames: client.limitedFrames,
      ...(counts.byTracker[client.tracker] ?? empty()),
    });
    const flood = of(flooder);
    const calm = of(normal);
    const svg = lineChart({
      title: 'Allowed vs rejected chat messages per second under a flood',
      subtitle: 'sample app + WsRateLimitAdapter; chat: 30 burst, 15/s per connection; counted on the server',
      note:
        `WS_RATE_LIMIT_MAX_VIOLATIONS=${ENV.WS_RATE_LIMIT_MAX_VIOLATIONS}: by default (10 in 60 s) the flooder ` +
        'would be closed with 1008 within a second.',
      caption:
        `The repository's sample app (chat limited to 30 burst, 15/s per connection) behind WsRateLimitAdapter; ` +
        `one client sends chat at ${FLOOD_RATE}/s from ${timeline.floodFrom} s to ${timeline.floodTo} s and ` +
        `${NORMAL_RATE}/s otherwise, another at ${NORMAL_RATE}/s throughout. Decisions counted per second on the ` +
        `server from WsRateLimitService.events$. WS_RATE_LIMIT_MAX_VIOLATIONS=${ENV.WS_RATE_LIMIT_MAX_VIOLATIONS} ` +
        '(the default, 10 violations in 60 s, would close the flooder with 1008 in its first second of flooding). ' +
        `Totals: flooder ${sum(flood.allowed)} allowed, ${sum(flood.rejected)} rejected; normal client ` +
        `${sum(calm.allowed)} allowed, ${sum(calm.rejected)} rejected. Generated by \`node dist/bench/run.js ` +
        `figure\` on ${new Date().toISOString().slice(0, 10)}, Node ${process.version}.`,
      xLabel: 'time (s)',
      yLabel: 'messages per second',
      band: { from: timeline.floodFrom, to: timeline.floodTo, label: `flood: ${FLOOD_RATE} messages/s` },
      reference: { value: 15, label: 'chat refill: 15/s' },
      series: [
        {
          label: `normal client: allowed (sends ${NORMAL_RATE}/s)`,
          values: calm.allowed,
          color: '#0969da',
          dashed: true,
        },
        {
          label: `normal client: rejected (${sum(calm.rejected)} in all)`,
          values: calm.rejected,
          color: '#8250df',
          dashed: true,
        },
        { label: 'flooder: allowed', values: flood.allowed, color: '#1a7f37' },
        { label: 'flooder: rejected', values: flood.rejected, color: '#cf222e' },
      ],
    });
    const target = quick ? QUICK_SVG : SVG;
    mkdirSync(new URL('./', target), { recursive: true });
    writeFileSync(target, svg);
    const svgPath = fileURLToPath(target);
    const floodSeconds = range(timeline.floodFrom + 1, timeline.floodTo);
    const steadyAllowed = floodSeconds.map((s) => flood.allowed[s]!);
    const targets: Target[] = [
      {
        target: 'the normal client is never rejected',
        measured: `${sum(calm.rejected)} rejected of ${sum(calm.allowed) + sum(calm.rejected)}`,
        pass: sum(calm.rejected) === 0,
      },
      {
        target: 'the flooder gets the refill rate (15/s) once its burst is spent',
        measured: `${Math.min(...steadyAllowed)}-${Math.max(...steadyAllowed)}/s in seconds ${floodSeconds[0]}-${floodSeconds.at(-1)}`,
        pass: steadyAllowed.every((n) => n >= 14 && n <= 16),
      },
      {
        target: 'server counts match the client (acks, rate_limit frames)',
        measured:
          `flooder ${flood.acks}/${sum(flood.allowed)} acks, ${flood.limitedFrames}/${sum(flood.rejected)} frames; ` +
          `normal ${calm.acks}/${sum(calm.allowed)} acks`,
        pass:
          flood.acks === sum(flood.allowed) &&
          flood.limitedFrames === sum(flood.rejected) &&
          calm.acks === sum(calm.allowed),
      },
      {
        target: 'no disconnect (threshold raised)',
        measured: `${counts.disconnects} disconnects`,
        pass: counts.disconnects === 0 && !flooder.closed && !normal.closed,
      },
    ];
    const perSecond = table(
      ['second', ...range(0, timeline.seconds).map(String)],
      [
        ['flooder allowed', ...flood.allowed.map(String)],
        ['flooder rejected', ...flood.rejected.map(String)],
        ['normal allowed', ...calm.allowed.map(String)],
        ['normal rejected', ...calm.rejected.map(String)],
      ],
    );
    const targetTable = table(
      ['check', 'measured', 'result'],
      targets.map((t) => [t.target, t.measured, verdict(t.pass)]),
    );
    console.log(`\n${perSecond}\n\n${targetTable}\n\nWrote ${svgPath}\n`);
    const markdown = [
      `## Flood figure (${quick ? '.tmp/flood-quick.svg, --quick' : 'docs/flood.svg'})`,
      '',
      `The sample app (\`dist/sample/app.module.js\`) behind WsRateLimitAdapter in a child process, with ` +
        `\`WS_RATE_LIMIT_MAX_VIOLATIONS=${ENV.WS_RATE_LIMIT_MAX_VIOLATIONS}\` (the default 10 would close the ` +
        `flooder). One client sends \`chat\` at ${FLOOD_RATE}/s from ${timeline.floodFrom} s to ${timeline.floodTo} s ` +
        `and ${NORMAL_RATE}/s otherwise; another at ${NORMAL_RATE}/s throughout. Decisions per second, counted on ` +
        'the server from `WsRateLimitService.events$`:',
      '',
      perSecond,
      '',
      targetTable,
      '',
    ].join('\n');
    return {
      timeline,
      env: ENV,
      flooder: flood,
      normal: calm,
      violations: counts.violations,
      disconnects: counts.disconnects,
      svgPath,
      targets,
      markdown,
    };
  } finally {
    for (const client of clients) client.socket.terminate();
    if (server.connected) server.send({ kind: 'stop' });
    await stopChild(server);
  }
}

interface Client {
  socket: WebSocket;
  tracker: string;
  sent: number;
  acks: number;
  limitedFrames: number;
  closed: boolean;
}

/** Connects and waits for the sample's `welcome` frame, which names the connection's tracker. */
function openClient(url: string): Promise<Client> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { perMessageDeflate: false });
    const timer = setTimeout(() => {
      socket.terminate();
      reject(new Error('no welcome frame within 10 s'));
    }, 10_000);
    const client: Client = { socket, tracker: '', sent: 0, acks: 0, limitedFrames: 0, closed: false };
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.on('close', () => (client.closed = true));
    socket.on('message', (data: Buffer) => {
      const frame = JSON.parse(data.toString()) as { event?: string; data?: { status?: { tracker?: string } } };
      if (frame.event === 'welcome') {
        clearTimeout(timer);
        client.tracker = frame.data?.status?.tracker ?? '';
        if (client.tracker === '') reject(new Error('the welcome frame names no tracker'));
        else resolve(client);
      } else if (frame.event === 'ack') {
        client.acks++;
      } else if (frame.event === 'rate_limit') {
        client.limitedFrames++;
      }
    });
  });
}

/**
 * The send times of each client, in ms from second 0: the normal client every 1/rate from
 * a quarter second on; the flooder at the calm rate until the flood, every 1/floodRate
 * during it, and at the calm rate again a quarter second after it.
 */
function schedule(timeline: FigureReport['timeline']): { flooder: number[]; normal: number[] } {
  const calm = 1000 / timeline.normalRate;
  const total = timeline.seconds * 1000;
  const from = timeline.floodFrom * 1000;
  const to = timeline.floodTo * 1000;
  const flooder: number[] = [];
  for (let t = 0; t < from; t += calm) flooder.push(t);
  const floodCount = Math.round(((to - from) / 1000) * timeline.floodRate);
  for (let k = 0; k < floodCount; k++) flooder.push(from + (k * 1000) / timeline.floodRate);
  for (let t = to + calm / 2; t < total; t += calm) flooder.push(t);
  const normal: number[] = [];
  for (let t = calm / 2; t < total; t += calm) normal.push(t);
  return { flooder, normal };
}

/** Sends on schedule (checked every 5 ms, at most 20 messages per client per tick) until the timeline ends. */
async function drive(
  timeline: FigureReport['timeline'],
  start: number,
  flooder: Client,
  normal: Client,
): Promise<void> {
  const times = schedule(timeline);
  const plan = [
    { client: flooder, times: times.flooder, next: 0, text: 'spam' },
    { client: normal, times: times.normal, next: 0, text: 'hello' },
  ];
  const end = start + timeline.seconds * 1000;
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const now = performance.now();
      if (now >= end) {
        clearInterval(timer);
        resolve();
        return;
      }
      for (const own of plan) {
        for (let burst = 0; burst < 20 && own.next < own.times.length && start + own.times[own.next]! <= now; burst++) {
          own.client.socket.send(JSON.stringify({ event: 'chat', data: { content: own.text } }));
          own.client.sent++;
          own.next++;
        }
      }
    }, 5);
  });
}

/** Builds the sample (`npm run build:sample`'s command) when dist/sample is missing or older than sample/. */
function ensureSampleBuilt(): void {
  const built = new URL('dist/sample/app.module.js', ROOT);
  const sources = fileURLToPath(new URL('sample/', ROOT));
  const newest = Math.max(
    ...readdirSync(sources)
      .filter((name) => name.endsWith('.ts'))
      .map((name) => statSync(`${sources}${name}`).mtimeMs),
  );
  if (existsSync(built) && statSync(built).mtimeMs >= newest) return;
  console.log('  building the sample (tsc -p sample/tsconfig.json)');
  execFileSync(
    process.execPath,
    [fileURLToPath(new URL('node_modules/typescript/bin/tsc', ROOT)), '-p', 'sample/tsconfig.json'],
    {
      cwd: fileURLToPath(ROOT),
      stdio: 'inherit',
    },
  );
}

/** The environment without WS_RATE_LIMIT_* variables, so only the figure's own apply. */
function withoutLimiterVariables(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([name]) => !name.startsWith('WS_RATE_LIMIT_')));
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}

function sum(values: readonly number[]): number {
  return values.reduce((total, value) => total + value, 0);
}
