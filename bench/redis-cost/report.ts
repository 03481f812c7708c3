/**
 * Redis's own cost per decision, counted instead of timed: the instructions redis-server runs
 * per decision (its scripts, commands, protocol and event loop), under valgrind's callgrind,
 * for ours (3-tier and 1-tier plans), the minimal one-key script and RateLimiterRedis.
 *
 * Why: the `redis` part times decisions per second, which on this 2-core VM depends on
 * which side (client or Redis) the machine of the day makes the bottleneck, and on other
 * work on the host; its ratios moved by 0.3 between runs of the same code. An instruction
 * count moves by about 1 %: it tells whether a change made Redis's share cheaper, and the
 * ratio of counts is the throughput ratio on a machine where Redis is the bottleneck.
 *
 * Each contender gets a fresh redis-server under callgrind (`WSRL_BENCH_REDIS_SERVER` as in
 * the `redis` part), warms up, has its counters zeroed (`callgrind_control -z`), makes its
 * decisions with 32 in flight, and has them dumped (`callgrind_control -d`); what ran inside
 * `serverCron` (a timer, ten times a second, stretched fifty-fold by callgrind's slowness)
 * is left out (`callgrind_annotate`), as no decision causes it. Skipped, with a
 * line saying so, where valgrind is not installed (Debian: `apt-get install valgrind`).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REDIS_CONTENDERS, TRACKERS, trackerOrder, type RedisContenderId } from '../redis/contenders.js';
import { startRedis } from '../redis/redis-server.js';

/** The contenders counted, in table order. */
const CONTENDERS = ['ours3', 'ours1', 'baseline', 'rlf'] as const satisfies readonly RedisContenderId[];
/** Decisions in flight at once (enough to fill Redis's reads, as at 256 in the `redis` part). */
const IN_FLIGHT = 32;

export interface RedisCostReport {
  markdown: string;
  /** Why nothing was counted (valgrind missing), when so. */
  skipped?: string;
  server?: string;
  decisions?: number;
  /** Instructions redis-server ran per decision, by contender id, `serverCron` left out. */
  instructions?: Partial<Record<(typeof CONTENDERS)[number], number>>;
  /** Instructions per decision run inside `serverCron` (left out of `instructions`). */
  cron?: Partial<Record<(typeof CONTENDERS)[number], number>>;
  /** Decisions that failed or were refused (should be 0). */
  failed?: number;
}

function hasValgrind(): boolean {
  try {
    execFileSync('valgrind', ['--version'], { stdio: 'ignore' });
    execFileSync('callgrind_control', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * The instructions of the newest callgrind dump in `dir` (its `summary:` or `totals:` line),
 * and those of them run inside `serverCron` (0 where the binary has no such symbol).
 */
function dumpedInstructions(dir: string): { total: number; cron: number } {
  const dumps = readdirSync(dir)
    .filter((name) => /\.\d+\.\d+$/.test(name))
    .sort((a, b) => Number(a.split('.').at(-1)) - Number(b.split('.').at(-1)));
  const last = dumps.at(-1);
  if (last === undefined) throw new Error(`no callgrind dump in ${dir}`);
  const file = join(dir, last);
  const total = /^(?:summary|totals): (\d+)/m.exec(readFileSync(file, 'utf8'));
  if (!total) throw new Error(`no instruction total in ${file}`);
  // Inclusive counts per function; serverCron's line reads "  1,234 (0.5%)  ...:serverCron [...]".
  const annotated = execFileSync('callgrind_annotate', ['--inclusive=yes', '--threshold=100', file], {
    encoding: 'utf8',
    maxBuffer: 1 << 28,
  });
  let cron = 0;
  for (const line of annotated.split('\n')) {
    const match = /^\s*([\d,]+)\s.*:serverCron \[/.exec(line);
    if (match) cron = Math.max(cron, Number(match[1]!.replaceAll(',', '')));
  }
  return { total: Number(total[1]), cron };
}

/** One contender on a fresh server under callgrind: instructions per decision, and failures. */
async function count(id: (typeof CONTENDERS)[number], warm: number, decisions: number) {
  const dir = mkdtempSync(join(tmpdir(), 'wsrl-callgrind-'));
  const redis = await startRedis(['valgrind', '-q', '--tool=callgrind', `--callgrind-out-file=${join(dir, 'cg.%p')}`]);
  try {
    const decider = await REDIS_CONTENDERS[id].prepare(redis.port);
    const order = trackerOrder(TRACKERS * 10, TRACKERS);
    let failed = 0;
    const run = async (from: number, to: number): Promise<void> => {
      let next = from;
      const lane = async (): Promise<void> => {
        while (next < to) {
          const index = order[next++ % order.length]!;
          try {
            if (!decider.allowed(await decider.decide(index))) failed++;
          } catch {
            failed++;
          }
        }
      };
      await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
    };
    await run(0, warm);
    const pid = String(redis.pid);
    execFileSync('callgrind_control', ['-z', pid], { stdio: 'ignore' });
    await run(warm, warm + decisions);
    execFileSync('callgrind_control', ['-d', pid], { stdio: 'ignore' });
    await decider.close();
    const { total, cron } = dumpedInstructions(dir);
    return {
      perDecision: (total - cron) / decisions,
      cronPerDecision: cron / decisions,
      failed,
      version: redis.version,
    };
  } finally {
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function runRedisCost(quick: boolean): Promise<RedisCostReport> {
  console.log('== Redis instructions per decision (callgrind)');
  if (!hasValgrind()) {
    const skipped = 'valgrind is not installed (Debian: apt-get install valgrind): nothing counted';
    console.log(`skipped: ${skipped}\n`);
    return { markdown: `## Redis instructions per decision\n\nSkipped: ${skipped}.\n`, skipped };
  }
  const warm = quick ? 1000 : 3000;
  const decisions = quick ? 5000 : 20_000;
  const instructions: RedisCostReport['instructions'] = {};
  const cron: RedisCostReport['instructions'] = {};
  let failed = 0;
  let server = 'unknown';
  for (const id of CONTENDERS) {
    const result = await count(id, warm, decisions);
    instructions[id] = result.perDecision;
    failed += result.failed;
    server = result.version;
    cron[id] = result.cronPerDecision;
    console.log(
      `  ${id.padEnd(9)} ${Math.round(result.perDecision).toLocaleString('en')} instructions per decision (and ${Math.round(result.cronPerDecision).toLocaleString('en')} in serverCron, left out)`,
    );
  }
  const of = (id: (typeof CONTENDERS)[number]): number => instructions[id]!;
  const ratio = (id: (typeof CONTENDERS)[number], base: (typeof CONTENDERS)[number]): string =>
    `${(of(base) / of(id)).toFixed(2)}x`;
  const rows = CONTENDERS.map(
    (id) =>
      `| ${REDIS_CONTENDERS[id].label} | ${Math.round(of(id)).toLocaleString('en')} | ${ratio(id, 'baseline')} | ${ratio(id, 'rlf')} |`,
  );
  const threeTier = of('baseline') / of('ours3');
  const markdown = [
    '## Redis instructions per decision',
    '',
    `redis-server ${server} under valgrind's callgrind, a fresh server per contender; ${decisions.toLocaleString('en')} allowed-mostly decisions over ${TRACKERS} trackers, ${IN_FLIGHT} in flight, after ${warm.toLocaleString('en')} to warm up. Instructions run inside \`serverCron\` are left out: it runs ten times a second whatever the load, and under callgrind, which slows Redis fifty-fold, it would add 3 % (Redis 7.0) to 15 % (Redis 8) to every contender, more on a busy machine. Deterministic to about 1 %, whatever else runs on the machine; a ratio is the throughput ratio where Redis is the bottleneck (higher is better for ours).`,
    '',
    '| contender | instructions / decision | baseline ÷ this | RateLimiterRedis ÷ this |',
    '|---|---:|---:|---:|',
    ...rows,
    '',
    '| target (where Redis is the bottleneck) | measured | result |',
    '|---|---:|---:|',
    `| ours (3-tier plan) >= 0.8x the minimal one-key script | ${threeTier.toFixed(2)}x | ${threeTier >= 0.8 ? 'PASS' : 'FAIL'} |`,
    `| ours (3-tier plan) ahead of RateLimiterRedis | ${ratio('ours3', 'rlf')} | ${of('ours3') < of('rlf') ? 'PASS' : 'FAIL'} |`,
    `| no failed or refused decision | ${failed} | ${failed === 0 ? 'PASS' : 'FAIL'} |`,
    '',
  ].join('\n');
  console.log('');
  return { markdown, server, decisions, instructions, cron, failed };
}
