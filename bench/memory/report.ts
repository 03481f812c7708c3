import { runChild } from '../support/child.js';
import { median, table, verdict } from '../support/stats.js';
import type { Target } from '../store/report.js';
import type { MemoryResult } from './worker.js';

/** One store's heap cost per key, over repeated fresh processes. */
export interface MemoryRow {
  store: string;
  label: string;
  keysPerTracker: number;
  heapBytesPerKey: number;
  bufferBytesPerKey: number;
  totalBytesPerKey: number;
  totalBytesPerTracker: number;
  samples: number[];
}

export interface MemoryReport {
  trackers: number;
  repeats: number;
  rows: MemoryRow[];
  targets: Target[];
  markdown: string;
}

const WORKER = new URL('./worker.js', import.meta.url);
const TRACKERS = 100_000;

const STORES: { store: string; label: string; keysPerTracker: number }[] = [
  { store: 'ours', label: 'ours: MemoryRateLimitStore, 1 token-bucket tier', keysPerTracker: 1 },
  { store: 'oursFrozen', label: 'ours, frozen plans (the store can keep nothing on them)', keysPerTracker: 1 },
  { store: 'oursWithPlans', label: 'ours, also counting the plans and key strings', keysPerTracker: 1 },
  { store: 'ours3', label: 'ours: 3-tier plan per tracker (3 keys)', keysPerTracker: 3 },
  { store: 'rlf', label: 'rate-limiter-flexible RateLimiterMemory', keysPerTracker: 1 },
  { store: 'rlfNoPrefix', label: "rate-limiter-flexible, keyPrefix ''", keysPerTracker: 1 },
  { store: 'throttler', label: '@nestjs/throttler ThrottlerStorageService', keysPerTracker: 1 },
  { store: 'bare', label: 'bare Map of { tokens, last } buckets', keysPerTracker: 1 },
];

/** Bytes per tracked key: each store in fresh `--expose-gc` processes, median of the repeats. */
export async function runMemory(quick: boolean): Promise<MemoryReport> {
  const repeats = quick ? 1 : 3;
  console.log(`== Heap bytes per tracked key (${TRACKERS.toLocaleString('en')} trackers, median of ${repeats})`);
  // Heap figures do not depend on timing, so the processes run three at a time.
  const jobs = STORES.flatMap((store) => Array.from({ length: repeats }, () => store));
  const samples = new Map<string, MemoryResult[]>();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < jobs.length) {
      const { store } = jobs[next++]!;
      const result = await runChild<MemoryResult>(WORKER, [store, String(TRACKERS)], {
        execArgv: ['--expose-gc'],
        timeoutMs: 120_000,
      });
      if (result.stored !== TRACKERS * (store === 'ours3' ? 3 : 1)) {
        throw new Error(`${store}: holds ${result.stored} keys after inserting ${TRACKERS} trackers`);
      }
      samples.set(store, [...(samples.get(store) ?? []), result]);
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  const rows: MemoryRow[] = STORES.map(({ store, label, keysPerTracker }) => {
    const results = samples.get(store)!;
    const keys = TRACKERS * keysPerTracker;
    const totals = results.map((r) => (r.heapBytes + r.bufferBytes) / keys);
    const row: MemoryRow = {
      store,
      label,
      keysPerTracker,
      heapBytesPerKey: median(results.map((r) => r.heapBytes / keys)),
      bufferBytesPerKey: median(results.map((r) => r.bufferBytes / keys)),
      totalBytesPerKey: median(totals),
      totalBytesPerTracker: median(totals) * keysPerTracker,
      samples: totals.map((value) => Math.round(value)),
    };
    console.log(`  ${store.padEnd(14)} ${row.totalBytesPerKey.toFixed(0).padStart(5)} B/key`);
    return row;
  });
  const bytes = (value: number): string => value.toFixed(0);
  const text = table(
    ['store', 'V8 heap B/key', 'ArrayBuffers B/key', 'total B/key', 'total B/tracker'],
    rows.map((row) => [
      row.label,
      bytes(row.heapBytesPerKey),
      bytes(row.bufferBytesPerKey),
      bytes(row.totalBytesPerKey),
      bytes(row.totalBytesPerTracker),
    ]),
  );
  const ours = rows.find((row) => row.store === 'ours')!;
  const withPlans = rows.find((row) => row.store === 'oursWithPlans')!;
  const targets: Target[] = [
    {
      target: 'ours <= 150 B per tracked key (heap + ArrayBuffers, 1 tier)',
      measured: `${bytes(ours.totalBytesPerKey)} B/key`,
      pass: ours.totalBytesPerKey <= 150,
    },
    {
      target: 'ours <= 150 B per tracker including its kept plan (1 tier)',
      measured: `${bytes(withPlans.totalBytesPerTracker)} B/tracker`,
      pass: withPlans.totalBytesPerTracker <= 150,
    },
    {
      target: 'a kept plan costs less than the store state it points to (1 tier)',
      measured: `plan ${bytes(withPlans.totalBytesPerTracker - ours.totalBytesPerTracker)} B, state ${bytes(ours.totalBytesPerTracker)} B`,
      pass: withPlans.totalBytesPerTracker - ours.totalBytesPerTracker < ours.totalBytesPerTracker,
    },
  ];
  const targetTable = table(
    ['target', 'measured', 'result'],
    targets.map((t) => [t.target, t.measured, verdict(t.pass)]),
  );
  console.log(`\n${text}\n\n${targetTable}\n`);
  const markdown = [
    '## Heap bytes per tracked key',
    '',
    `${TRACKERS.toLocaleString('en')} trackers inserted into each store in a fresh \`node --expose-gc\` process; ` +
      '`gc()` before and after; growth of `heapUsed` plus `arrayBuffers` (typed-array storage lives outside ' +
      `the V8 heap, and our store keeps its numbers there), divided by the keys; median of ${repeats}. ` +
      'Key strings the caller holds are built before measuring; whatever a store builds itself is counted.',
    '',
    text,
    '',
    targetTable,
    '',
  ].join('\n');
  return { trackers: TRACKERS, repeats, rows, targets, markdown };
}
