/**
 * `npm run bench`: every benchmark, each measurement in its own child process, baselines
 * measured in the same run. Prints tables with ratios and pass/fail against the targets of
 * issues 2, 3, 4, 6 and 11, writes `bench/results/<date>.json` and `bench/results/latest.md` (a run
 * of some parts, or `--quick`: `latest-<parts>.md`).
 *
 *   node dist/bench/run.js [store] [memory] [gateway] [gateway-io] [redis] [redis-cost] [connections] [figure] [--quick] [--cpu-prof]
 *
 * No part named: all eight (`figure` also writes docs/flood.svg; `redis-cost` needs valgrind, and says it
 * skipped without it). `--quick` shortens every timing, for trying changes (its
 * figures are noisier and are not the ones to quote). `--cpu-prof` writes a V8 CPU profile
 * of every store worker and gateway server (ws and socket.io) to `.tmp/bench-profiles/` (profiling slows them).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, freemem, loadavg, platform, release, totalmem } from 'node:os';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { runStore, type StoreReport } from './store/report.js';
import { runMemory, type MemoryReport } from './memory/report.js';
import { runGateway, type GatewayReport } from './gateway/report.js';
import { runGatewayIo, type IoGatewayReport } from './gateway-io/report.js';
import { runRedis, type RedisReport } from './redis/report.js';
import { runRedisCost, type RedisCostReport } from './redis-cost/report.js';
import { runConnections, type ConnectionsReport } from './connections/report.js';
import { runFigure, type FigureReport } from './figure/report.js';

const PARTS = ['store', 'memory', 'gateway', 'gateway-io', 'redis', 'redis-cost', 'connections', 'figure'] as const;
type Part = (typeof PARTS)[number];

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const profileDir = args.includes('--cpu-prof')
  ? fileURLToPath(new URL('../../.tmp/bench-profiles/', import.meta.url))
  : undefined;
const named = args.filter((arg) => !arg.startsWith('--'));
for (const arg of args.filter((a) => a.startsWith('--'))) {
  if (arg !== '--quick' && arg !== '--cpu-prof') {
    console.error(`unknown flag "${arg}"; expected --quick or --cpu-prof`);
    process.exit(2);
  }
}
for (const arg of named) {
  if (!(PARTS as readonly string[]).includes(arg)) {
    console.error(`unknown part "${arg}"; expected any of: ${PARTS.join(', ')}`);
    process.exit(2);
  }
}
const parts: Part[] = named.length > 0 ? (named as Part[]) : [...PARTS];

const machine = machineInfo();
console.log(`nestjs-ws-rate-limit benchmarks: ${parts.join(', ')}${quick ? ' (quick)' : ''}`);
console.log(`${machine.cpu}, ${machine.cores} cores, Node ${machine.node}, ${machine.os}`);
const loadAtStart = loadavg()[0]!;
// Every figure here assumes the two cores are ours; other work on the machine skews them.
const busy = loadAtStart > 0.5 * machine.cores;
console.log(
  `load average ${loadAtStart.toFixed(2)}${busy ? ': the machine is busy, figures will be low and noisy' : ''}\n`,
);

const started = performance.now();
const sections: string[] = [];
const results: {
  store?: StoreReport;
  memory?: MemoryReport;
  gateway?: GatewayReport;
  gatewayIo?: IoGatewayReport;
  redis?: RedisReport;
  redisCost?: RedisCostReport;
  connections?: ConnectionsReport;
  figure?: FigureReport;
} = {};
/** Seconds each part took. */
const partSeconds: Partial<Record<Part, number>> = {};
for (const part of parts) {
  const partStarted = performance.now();
  let report: { markdown: string };
  if (part === 'store') report = results.store = await runStore(quick, profileDir);
  else if (part === 'memory') report = results.memory = await runMemory(quick);
  else if (part === 'gateway') report = results.gateway = await runGateway(quick, profileDir);
  else if (part === 'gateway-io') report = results.gatewayIo = await runGatewayIo(quick, profileDir);
  else if (part === 'redis') report = results.redis = await runRedis(quick, profileDir);
  else if (part === 'redis-cost') report = results.redisCost = await runRedisCost(quick);
  else if (part === 'connections') report = results.connections = await runConnections(quick, profileDir);
  else report = results.figure = await runFigure(quick);
  sections.push(report.markdown);
  partSeconds[part] = (performance.now() - partStarted) / 1000;
  console.log(`(${part}: ${partSeconds[part].toFixed(0)} s)\n`);
}
const seconds = (performance.now() - started) / 1000;
const loadAtEnd = loadavg()[0]!;
console.log(`All done in ${seconds.toFixed(0)} s (load average ${loadAtEnd.toFixed(2)} at the end).`);

const date = new Date();
const resultsDir = fileURLToPath(new URL('../../bench/results/', import.meta.url));
mkdirSync(resultsDir, { recursive: true });
const stamp = date
  .toISOString()
  .replace(/:/g, '-')
  .replace(/\.\d+Z$/, 'Z');
const jsonName = `${stamp}.json`;
writeFileSync(
  `${resultsDir}${jsonName}`,
  `${JSON.stringify(
    {
      date: date.toISOString(),
      parts,
      quick,
      seconds,
      partSeconds,
      machine,
      loadAverage: { start: loadAtStart, end: loadAtEnd },
      ...strip(results),
    },
    null,
    2,
  )}\n`,
);
const header = [
  '# Benchmark results (latest run)',
  '',
  `Run ${date.toISOString()}, parts: ${parts.join(', ')}${quick ? ' (--quick: shortened timings, noisy)' : ''}; ` +
    `took ${seconds.toFixed(0)} s (${parts.map((part) => `${part} ${partSeconds[part]!.toFixed(0)} s`).join(', ')}). Raw figures: \`${jsonName}\`. How each benchmark works: \`bench/README.md\`.`,
  '',
  '| machine | |',
  '|---|---|',
  `| CPU | ${machine.cpu} |`,
  `| cores | ${machine.cores} |`,
  `| memory | ${machine.memory} |`,
  `| Node | ${machine.node} |`,
  `| OS | ${machine.os} |`,
  `| load average (1 min) | ${loadAtStart.toFixed(2)} at start, ${loadAtEnd.toFixed(2)} at end${busy ? ' (busy: figures unreliable)' : ''} |`,
  `| commit | ${machine.commit} |`,
  `| versions | ${Object.entries(machine.versions)
    .map(([name, version]) => `${name} ${version}`)
    .join(', ')} |`,
  '',
];
// A run of every part (not --quick) is the latest run: latest.md. Anything less writes its
// own file, so that trying one part does not overwrite the full run's tables beside it.
const full = parts.length === PARTS.length && !quick;
const markdownName = full ? 'latest.md' : `latest-${parts.join('-')}${quick ? '-quick' : ''}.md`;
writeFileSync(`${resultsDir}${markdownName}`, `${[...header, ...sections].join('\n')}\n`);
console.log(`Wrote bench/results/${jsonName} and bench/results/${markdownName}`);
if (profileDir) console.log(`CPU profiles in ${profileDir}`);

/** The JSON keeps figures only; the markdown is in latest.md (or latest-<parts>.md). */
function strip(value: typeof results): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, report] of Object.entries(value)) {
    const { markdown: _markdown, ...figures } = report as { markdown: string };
    out[key] = figures;
  }
  return out;
}

function machineInfo() {
  const list = cpus();
  const version = (name: string): string => {
    try {
      const path = fileURLToPath(new URL(`../../node_modules/${name}/package.json`, import.meta.url));
      return (JSON.parse(readFileSync(path, 'utf8')) as { version: string }).version;
    } catch {
      return 'not installed';
    }
  };
  let commit = 'unknown';
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'lib'], { encoding: 'utf8' }).trim() !== '';
    commit = `${head}${dirty ? ' (lib/ has uncommitted changes)' : ''}`;
  } catch {
    // Not a git checkout: leave it unknown.
  }
  return {
    cpu: list[0]?.model.trim() ?? 'unknown',
    cores: list.length,
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB (${(freemem() / 2 ** 30).toFixed(1)} GiB free at start)`,
    node: process.version,
    os: `${platform()} ${release()}`,
    commit,
    versions: Object.fromEntries(
      [
        'rate-limiter-flexible',
        '@nestjs/throttler',
        '@nestjs/core',
        '@nestjs/platform-ws',
        'ws',
        '@nestjs/platform-socket.io',
        'socket.io',
        'socket.io-client',
        'prom-client',
        'ioredis',
      ].map((name) => [name, version(name)]),
    ),
  };
}
