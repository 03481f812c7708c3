import { nextMessage, profileFlags, startChild, stopChild } from '../support/child.js';
import { formatRate, formatRatio, median, spread, table, verdict } from '../support/stats.js';
import type { Round, Timing } from '../support/timing.js';
import { CONTENDERS, FRESH_CONTENDERS, WORKLOADS, type ContenderId, type WorkloadId } from './contenders.js';

/** One contender on one workload. */
export interface StoreCell {
  contender: ContenderId;
  workload: WorkloadId;
  medianOpsPerSecond: number;
  opsPerSecond: number[];
  allowedShare: number;
  /** Median CPU share of the worker over its rounds (see `Round.cpuShare`). */
  cpuShare: number;
}

/** A pass/fail line. */
export interface Target {
  target: string;
  measured: string;
  pass: boolean;
}

export interface StoreReport {
  timing: Timing;
  cells: StoreCell[];
  targets: Target[];
  markdown: string;
}

const WORKER = new URL('./worker.js', import.meta.url);
/** Processes per contender and column; each contributes `timing.rounds` rounds. */
const PROCESSES = 2;
const COLUMN_TITLES: Record<WorkloadId, string> = {
  'hot-allowed': '1 key, allowed',
  'hot-rejected': '1 key, rejected',
  'many-allowed': '100k keys, allowed',
  'many-rejected': '100k keys, rejected',
  fresh: 'new tracker (plan + 1st decision)',
};

/** The contenders timed on a workload (the `fresh` column times ours and the bare Map only). */
function contendersOf(workload: WorkloadId): ContenderId[] {
  return workload === 'fresh' ? [...FRESH_CONTENDERS] : (Object.keys(CONTENDERS) as ContenderId[]);
}

/** The columns compared with rate-limiter-flexible (all but `fresh`). */
const PEER_COLUMNS = ['hot-allowed', 'hot-rejected', 'many-allowed', 'many-rejected'] as const;

/** Memory-store decisions per second: every contender on every workload, one child each. */
export async function runStore(quick: boolean, profileDir?: string): Promise<StoreReport> {
  const timing: Timing = quick
    ? { warmupMs: 300, rewarmMs: 50, rounds: 2, roundMs: 300 }
    : { warmupMs: 300, rewarmMs: 100, rounds: 3, roundMs: 750 };
  const contenders = Object.keys(CONTENDERS) as ContenderId[];
  const workloads = Object.keys(WORKLOADS) as WorkloadId[];
  console.log(
    `== Memory-store decisions per second (median of ${PROCESSES} processes x ${timing.rounds} rounds x ` +
      `${timing.roundMs} ms per cell, all rounds of a column interleaved)`,
  );
  const cells: StoreCell[] = [];
  for (const workload of workloads) {
    const rounds = await interleaved(workload, contendersOf(workload), timing, profileDir);
    for (const contender of contendersOf(workload)) {
      const own = rounds.get(contender)!;
      const opsPerSecond = own.map((round) => round.opsPerSecond);
      const cell: StoreCell = {
        contender,
        workload,
        medianOpsPerSecond: median(opsPerSecond),
        opsPerSecond: opsPerSecond.map(Math.round),
        allowedShare: sum(own.map((round) => round.allowed)) / sum(own.map((round) => round.total)),
        cpuShare: median(own.map((round) => round.cpuShare)),
      };
      cells.push(cell);
      console.log(
        `  ${workload.padEnd(13)} ${contender.padEnd(9)} ${formatRate(cell.medianOpsPerSecond).padStart(10)} ` +
          `${spread(opsPerSecond).padStart(6)}  allowed ${percent(cell.allowedShare).padStart(7)}  ` +
          `CPU ${percent(cell.cpuShare)} of a core`,
      );
    }
  }

  const at = (contender: ContenderId, workload: WorkloadId): StoreCell =>
    cells.find((cell) => cell.contender === contender && cell.workload === workload)!;
  const has = (contender: ContenderId, workload: WorkloadId): boolean =>
    cells.some((cell) => cell.contender === contender && cell.workload === workload);
  const rlfBest = (workload: WorkloadId): number =>
    Math.max(at('rlfAwait', workload).medianOpsPerSecond, at('rlfBatch', workload).medianOpsPerSecond);

  const rates = table(
    ['decisions per second (median)', ...workloads.map((id) => COLUMN_TITLES[id])],
    contenders.map((contender) => [
      CONTENDERS[contender].label,
      ...workloads.map((workload) => {
        if (!has(contender, workload)) return '-';
        const cell = at(contender, workload);
        return `${formatRate(cell.medianOpsPerSecond)} ${spread(cell.opsPerSecond)}`;
      }),
    ]),
  );
  const allowed = table(
    ['share of decisions allowed', ...workloads.map((id) => COLUMN_TITLES[id])],
    contenders.map((contender) => [
      CONTENDERS[contender].label,
      ...workloads.map((workload) => (has(contender, workload) ? percent(at(contender, workload).allowedShare) : '-')),
    ]),
  );
  const ratioRow = (
    label: string,
    baseline: (workload: WorkloadId) => number,
    ours: ContenderId = 'ours',
    columns: readonly WorkloadId[] = PEER_COLUMNS,
  ): string[] => [
    label,
    ...workloads.map((workload) =>
      columns.includes(workload) ? formatRatio(at(ours, workload).medianOpsPerSecond / baseline(workload)) : '-',
    ),
  ];
  const bareOf = (w: WorkloadId): number => at('bare', w).medianOpsPerSecond;
  const ratios = table(
    ['ours over', ...workloads.map((id) => COLUMN_TITLES[id])],
    [
      ratioRow('3 tiers / rate-limiter-flexible, faster discipline', rlfBest),
      ratioRow('3 tiers / rate-limiter-flexible, await each', (w) => at('rlfAwait', w).medianOpsPerSecond),
      ratioRow('3 tiers / @nestjs/throttler storage', (w) => at('throttler', w).medianOpsPerSecond),
      ratioRow('3 tiers / bare token bucket (1 tier)', bareOf, 'ours', workloads),
      ratioRow('1 tier / bare token bucket (1 tier)', bareOf, 'ours1', workloads),
    ],
  );

  const targets: Target[] = PEER_COLUMNS.filter((workload) => workloads.includes(workload)).map((workload) => {
    const ratio = at('ours', workload).medianOpsPerSecond / rlfBest(workload);
    return {
      target: `ours >= 2x rate-limiter-flexible, ${COLUMN_TITLES[workload]}`,
      measured: formatRatio(ratio),
      pass: ratio >= 2,
    };
  });
  for (const workload of PEER_COLUMNS.filter((id) => workloads.includes(id))) {
    const ratio = at('ours1', workload).medianOpsPerSecond / bareOf(workload);
    targets.push({
      target: `ours, 1 tier >= 0.6x the bare Map, ${COLUMN_TITLES[workload]}`,
      measured: formatRatio(ratio),
      pass: ratio >= 0.6,
    });
  }
  if (workloads.includes('fresh')) {
    for (const contender of ['ours1', 'ours'] as const) {
      // Time per first decision over the bare Map's time per insertion.
      const ratio = bareOf('fresh') / at(contender, 'fresh').medianOpsPerSecond;
      targets.push({
        target: `new tracker, ${contender === 'ours' ? '3 tiers' : '1 tier'} (plan + decision) within 2x a bare Map insert`,
        measured: `${formatRatio(ratio)} the bare Map's time`,
        pass: ratio <= 2,
      });
    }
  }
  for (const [rejected, allowedId] of [
    ['hot-rejected', 'hot-allowed'],
    ['many-rejected', 'many-allowed'],
  ] as const) {
    const ratio = at('ours', rejected).medianOpsPerSecond / at('ours', allowedId).medianOpsPerSecond;
    targets.push({
      target: `ours: rejected path not slower than allowed, ${rejected.startsWith('hot') ? '1 key' : '100k keys'}`,
      measured: `rejected/allowed = ${formatRatio(ratio)}`,
      pass: ratio >= 1,
    });
  }
  const targetTable = table(
    ['target', 'measured', 'result'],
    targets.map((t) => [t.target, t.measured, verdict(t.pass)]),
  );

  const shares = cells.map((cell) => cell.cpuShare);
  const cpuLine =
    `Workers had ${percent(Math.min(...shares))} to ${percent(Math.max(...shares))} of a core during their rounds ` +
    '(CPU time over wall time; well below 100 % means other processes took the CPU).';
  const text = [rates, '', allowed, '', ratios, '', targetTable, '', cpuLine].join('\n');
  console.log(`\n${text}\n`);
  const markdown = [
    '## Memory-store decisions per second',
    '',
    `Each cell: ${PROCESSES} processes of its own, each warmed up for ${timing.warmupMs} ms, then ` +
      `${timing.rounds} rounds of ${timing.roundMs} ms each; the cell shows the median of its ` +
      `${PROCESSES * timing.rounds} rounds (± the largest deviation of a round from it). The processes of a ` +
      `column take their rounds in turn (${timing.rewarmMs} ms untimed before each), so a slow spell of the ` +
      'machine falls on all contenders. Ours decides a three-tier plan ' +
      '(global bucket, type bucket, expensive sliding log) per decision; plans are built once per tracker ' +
      'and reused, as the guard builds one per connection and handler. The baselines decide one limit. ' +
      'rate-limiter-flexible and @nestjs/throttler return promises: awaited one at a time as a guard does, ' +
      'and for rate-limiter-flexible also in batches; the targets use its faster figure.',
    '',
    text,
    '',
  ].join('\n');
  return { timing, cells, targets, markdown };
}

function percent(share: number): string {
  if (share > 0 && share < 0.001) return '<0.1 %';
  if (share < 1 && share > 0.999) return '>99.9 %';
  return `${(share * 100).toFixed(1)} %`;
}

function sum(values: readonly number[]): number {
  return values.reduce((total, value) => total + value, 0);
}

/**
 * Runs every contender of a workload in `PROCESSES` processes of its own, all prepared up
 * front, then times them round by round, one process at a time, the order rotating each
 * round. A slow spell of the machine then lands on every contender alike instead of on
 * whichever cell ran during it, and each figure is the median over several processes: the
 * speed of one process can differ from the next by a third (code and heap placement), and
 * stays put for its whole life.
 */
async function interleaved(
  workload: WorkloadId,
  contenders: readonly ContenderId[],
  timing: Timing,
  profileDir: string | undefined,
): Promise<Map<ContenderId, Round[]>> {
  // Ordered so that consecutive turns belong to different contenders.
  const owners = Array.from({ length: PROCESSES }, () => contenders).flat();
  const children = owners.map((contender, i) =>
    startChild(
      WORKER,
      [contender, workload],
      profileFlags(profileDir, `store-${workload}-${contender}-${Math.floor(i / contenders.length) + 1}`),
    ),
  );
  const ask = async <T>(i: number, command: object, answer: string, budgetMs: number): Promise<T> => {
    const reply = nextMessage<T>(children[i]!, answer, budgetMs + 30_000);
    children[i]!.send(command);
    return reply;
  };
  try {
    await Promise.all(children.map((child) => nextMessage(child, 'ready', 180_000)));
    for (let i = 0; i < children.length; i++) {
      await ask(i, { kind: 'warm', ms: timing.warmupMs }, 'warmed', timing.warmupMs);
    }
    const rounds = new Map<ContenderId, Round[]>(contenders.map((contender) => [contender, []]));
    for (let round = 0; round < timing.rounds; round++) {
      for (let k = 0; k < children.length; k++) {
        const i = (k + round) % children.length;
        const result = await ask<Round>(
          i,
          { kind: 'round', rewarmMs: timing.rewarmMs, ms: timing.roundMs },
          'round',
          timing.rewarmMs + timing.roundMs,
        );
        rounds.get(owners[i]!)!.push(result);
      }
    }
    return rounds;
  } finally {
    for (const child of children) if (child.connected) child.send({ kind: 'done' });
    await Promise.all(children.map((child) => stopChild(child)));
  }
}
