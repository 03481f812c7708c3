import { Logger } from '@nestjs/common';
import type { ResolvedWsRateLimitOptions } from '../config/resolve-options.js';
import type { MetricsRegistry } from '../interfaces/options.interface.js';
import type { RateLimitCode, TierName } from '../interfaces/plan.interface.js';
import { OTHER_TYPES } from '../plans/route-resolver.js';

/** The counters a child of a labelled prom-client metric offers. */
interface CounterChild {
  inc(value?: number): void;
}
interface LabelledCounter {
  labels(...values: string[]): CounterChild;
}
interface Histogram {
  observe(value: number): void;
}

/** What the limiter reports; a no-op when metrics are off. */
export interface LimiterMetrics {
  /** An allowed message (the hot path: no string is built). */
  allowed(type: string): void;
  /** A rejected message (`shadow_rejected`: rejected but let through in shadow mode). */
  rejected(type: string, result: 'rejected' | 'shadow_rejected', tier: string, code: string): void;
  /** A decision left a tier below 20% of its capacity. */
  nearLimit(tier: TierName, type: string): void;
  /** A connection attempt at the upgrade. */
  connection(result: 'accepted' | 'refused' | 'shadow_refused', reason: string): void;
  /** A connection the limiter closed. */
  disconnect(reason: string): void;
  /** A violation counted against a connection. */
  violation(code: RateLimitCode, type: string): void;
  /** A store call that failed or timed out. */
  storeError(): void;
  /** The store became unreachable. */
  storeOutage(): void;
  /** How long a store decision took. */
  storeLatency(seconds: number): void;
  /** Stops this app's figures from counting in the gauges (the app shuts down). */
  close(): void;
}

const noop = (): void => undefined;
/** Distinct `type` label values a metrics instance gives out; later types share `OTHER_TYPES` (as their buckets do). */
export const MAX_TYPE_LABELS = 1024;

/** Metrics that record nothing. */
export const NO_METRICS: LimiterMetrics = Object.freeze({
  allowed: noop,
  rejected: noop,
  nearLimit: noop,
  connection: noop,
  disconnect: noop,
  violation: noop,
  storeError: noop,
  storeOutage: noop,
  storeLatency: noop,
  close: noop,
});

/** The names and labels published, for the README (a test checks the two agree). */
export const METRICS = [
  [
    'decisions_total',
    'counter',
    'result, tier, code, type',
    'Message decisions by result (allowed, rejected, shadow_rejected).',
  ],
  ['near_limit_total', 'counter', 'tier, type', 'Allowed messages that left a tier below 20% of its capacity.'],
  [
    'connections_total',
    'counter',
    'result, reason',
    'Connection attempts at the upgrade by result (accepted, refused, shadow_refused), and why.',
  ],
  ['disconnects_total', 'counter', 'reason', 'Connections the limiter closed, and why.'],
  ['violations_total', 'counter', 'code, type', 'Rejected messages counted against their connection.'],
  [
    'store_errors_total',
    'counter',
    '',
    'Store calls that failed, timed out, or were refused at once while the store was down (each decided by the fail mode; a `peek` the fallback answered in fail mode `open` too).',
  ],
  ['store_outages_total', 'counter', '', "Times the store became unreachable (the Redis store's breaker opened)."],
  ['store_decision_seconds', 'histogram', '', 'Time a shared-store decision took.'],
  ['open_connections', 'gauge', '', 'Connections the limiter tracks now.'],
  [
    'store_fallback',
    'gauge',
    '',
    '1 while the store cannot decide and the fail mode does (local limits, or refusals), else 0.',
  ],
  [
    'memory_store_keys',
    'gauge',
    'store',
    'Tier states an embedded memory store holds (what maxKeys bounds): store="memory" or "fallback" (fail-open).',
  ],
  [
    'memory_store_evictions_total',
    'counter',
    'store',
    'Tier states a memory store dropped, while they still mattered, to stay within maxKeys (their limits started over).',
  ],
] as const;

/** What the memory-store metrics read of a store (`MemoryRateLimitStore`). */
export interface MemoryStoreFigures {
  readonly size: number;
  readonly evictions: number;
}

/**
 * The embedded memory stores an app decides with, by `store` label: `memory` (the store, when
 * it is the memory store) and `fallback` (the fail-open fallback, once an outage made it).
 */
export type MemoryStoresOf = () => Iterable<readonly [label: 'memory' | 'fallback', store: MemoryStoreFigures]>;

/**
 * Creates the metrics through prom-client when it is installed and metrics are on;
 * otherwise says once, at start-up, how to turn them on, and records nothing.
 */
export async function createMetrics(
  options: ResolvedWsRateLimitOptions,
  openConnections: () => number,
  logger: Logger,
  storeFallback: () => boolean = () => false,
  memoryStores: MemoryStoresOf = () => [],
): Promise<LimiterMetrics> {
  if (!options.metrics) return NO_METRICS;
  let prom: PromClient;
  try {
    const loaded = (await import('prom-client')) as unknown as PromClient & { default?: PromClient };
    prom = loaded.Counter ? loaded : loaded.default!;
  } catch {
    logger.log(
      'Metrics are off: install prom-client (npm install prom-client) to publish them, ' +
        'or set WS_RATE_LIMIT_METRICS=false to silence this line',
    );
    return NO_METRICS;
  }
  const registry = (options.metricsRegistry ?? prom.register) as MetricsRegistry & {
    getSingleMetric(name: string): unknown;
  };
  const prefix = options.metricsPrefix;
  /**
   * One metric per name per registry: a second app in the process shares the first's, and
   * one your code registered first is used when it is of the same kind with the same labels
   * in the same order (the limiter passes label values by position); any other stops
   * start-up, where counting into it would fail every decision.
   */
  const metric = <T>(
    Kind: new (config: object) => T,
    name: string,
    help: string,
    config: Record<string, unknown> & { labelNames?: string[] } = {},
  ): T => {
    const fullName = `${prefix}${name}`;
    const existing = registry.getSingleMetric(fullName) as (T & { labelNames?: unknown }) | undefined;
    if (existing === undefined) return new Kind({ name: fullName, help, registers: [registry], ...config });
    const kind = (existing as object).constructor.name;
    const found = Array.isArray(existing.labelNames) ? (existing.labelNames as unknown[]).map(String) : [];
    const wanted = config.labelNames ?? [];
    if (kind !== Kind.name || found.join(',') !== wanted.join(',')) {
      throw new Error(
        `WsRateLimitModule: the metrics registry already holds ${fullName} as a ${kind} labelled ` +
          `[${found.join(', ')}]; the limiter publishes it as a ${Kind.name} labelled [${wanted.join(', ')}]. ` +
          'Remove yours, or set WS_RATE_LIMIT_METRICS_PREFIX (option metricsPrefix) to publish under other names',
      );
    }
    return existing;
  };
  const help = Object.fromEntries(METRICS.map(([name, , , text]) => [name, text])) as Record<string, string>;
  const labels = (name: string): string[] =>
    METRICS.find(([metricName]) => metricName === name)![2]
      .split(', ')
      .filter(Boolean);
  const counter = (name: string): LabelledCounter & CounterChild => {
    const existed = registry.getSingleMetric(`${prefix}${name}`) !== undefined;
    const made = metric(prom.Counter, name, help[name]!, {
      labelNames: labels(name),
      // A scrape (or any read of the metric) first adds what the tallies counted since the last one.
      collect(this: object) {
        for (const tally of TALLIES.get(this)?.values() ?? []) tally.flush();
      },
    }) as LabelledCounter & CounterChild;
    if (!existed) TALLIES.set(made, new Map());
    return made;
  };
  const decisions = counter('decisions_total');
  const nearLimit = counter('near_limit_total');
  const connections = counter('connections_total');
  const disconnects = counter('disconnects_total');
  const violations = counter('violations_total');
  const storeErrors = counter('store_errors_total');
  const storeOutages = counter('store_outages_total');
  const storeLatency = metric(prom.Histogram, 'store_decision_seconds', help.store_decision_seconds!, {
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
  }) as Histogram;
  // A gauge reads every app that publishes it in this registry (two apps in one process, or
  // an app created again in a test): the sum of their open connections, and 1 while any of
  // them is in fall-back. Each app's source leaves when the app shuts down.
  const gauge = (name: string, read: () => number, combine: (values: number[]) => number): (() => void) => {
    const existed = registry.getSingleMetric(`${prefix}${name}`) !== undefined;
    const made = metric(prom.Gauge, name, help[name]!, {
      collect(this: { set(value: number): void }) {
        this.set(combine([...(GAUGE_SOURCES.get(this) ?? [])].map((source) => source())));
      },
    }) as object;
    return addSource(GAUGE_SOURCES, made, existed, name, read);
  };
  /**
   * A metric the limiter fills when it is collected (the gauges, the memory-store evictions),
   * found in the registry but not made by this module: its collection is your code's, so
   * nothing would ever fill it. Refused at start-up, as one of another kind is.
   */
  const refuseForeign = (name: string): never => {
    throw new Error(
      `WsRateLimitModule: the metrics registry already holds ${prefix}${name}, registered by your code; ` +
        'the limiter sets it when it is collected, and cannot fill one it did not create. ' +
        'Remove yours, or set WS_RATE_LIMIT_METRICS_PREFIX (option metricsPrefix) to publish under other names',
    );
  };
  /**
   * Adds this app's source to a metric read at collection (`made`: this module's, unless it
   * `existed` before without sources, then refused); returns what takes it out again.
   */
  const addSource = <S>(
    sourcesOf: WeakMap<object, Set<S>>,
    made: object,
    existed: boolean,
    name: string,
    source: S,
  ): (() => void) => {
    let sources = sourcesOf.get(made);
    if (!sources) {
      if (existed) refuseForeign(name);
      sourcesOf.set(made, (sources = new Set()));
    }
    sources.add(source);
    return () => void sources.delete(source);
  };
  // Memory stores, read at each collection: apps sharing one store count it once.
  const storeFigures = (name: string, collect: (this: LabelledMetric, stores: StoresByLabel) => void): (() => void) => {
    const existed = registry.getSingleMetric(`${prefix}${name}`) !== undefined;
    const made = metric(name.endsWith('_total') ? prom.Counter : prom.Gauge, name, help[name]!, {
      labelNames: labels(name),
      collect(this: LabelledMetric) {
        const stores: StoresByLabel = new Map();
        for (const source of STORE_SOURCES.get(this) ?? []) {
          for (const [label, store] of source()) stores.set(store, label);
        }
        collect.call(this, stores);
      },
    }) as object;
    return addSource(STORE_SOURCES, made, existed, name, memoryStores);
  };
  const unpublish = [
    gauge('open_connections', openConnections, (values) => values.reduce((sum, value) => sum + value, 0)),
    gauge(
      'store_fallback',
      () => (storeFallback() ? 1 : 0),
      (values) => Math.max(0, ...values),
    ),
    storeFigures('memory_store_keys', function (stores) {
      const held = new Map<string, number>([
        ['memory', 0],
        ['fallback', 0],
      ]);
      for (const [store, label] of stores) held.set(label, held.get(label)! + store.size);
      for (const [label, size] of held) this.labels(label).set!(size);
    }),
    storeFigures('memory_store_evictions_total', function (stores) {
      // A counter only grows: each store adds what it dropped since the last collection; a
      // store whose app has closed keeps what it added.
      let seen = EVICTIONS_SEEN.get(this);
      if (!seen) EVICTIONS_SEEN.set(this, (seen = new WeakMap()));
      for (const [store, label] of stores) {
        // Adding 0 shows the series from the first collection on.
        this.labels(label).inc(store.evictions - (seen.get(store) ?? 0));
        seen.set(store, store.evictions);
      }
    }),
  ];
  // On the hot path a decision costs a Map lookup and an add to a plain number: prom-client's
  // own inc() hashes and validates the labels on every call.
  const foreign = new WeakMap<object, Map<string, Tally>>();
  const tally = (metricOf: LabelledCounter, key: string, values: string[]): Tally => {
    let table = TALLIES.get(metricOf);
    const deferred = table !== undefined;
    if (!table) {
      table = foreign.get(metricOf);
      if (!table) foreign.set(metricOf, (table = new Map()));
    }
    let found = table.get(key);
    if (!found) table.set(key, (found = new Tally(metricOf.labels(...values), deferred)));
    return found;
  };
  // A message type is a handler's event or a name given in code, which may come from clients
  // (`consume(socket, { type })`): past MAX_TYPE_LABELS distinct ones, the rest share a label.
  const typeLabels = new Set<string>();
  const typeLabel = (type: string): string => {
    if (typeLabels.has(type)) return type;
    if (typeLabels.size >= MAX_TYPE_LABELS) return OTHER_TYPES;
    typeLabels.add(type);
    return type;
  };
  const allowedByType = new Map<string, Tally>();
  return {
    allowed: (type) => {
      let found = allowedByType.get(type);
      if (!found) {
        const label = typeLabel(type);
        found = tally(decisions, `allowed|||${label}`, ['allowed', '', '', label]);
        if (label === type) allowedByType.set(type, found);
      }
      found.add();
    },
    rejected: (type, result, tier, code) => {
      const label = typeLabel(type);
      tally(decisions, `${result}|${tier}|${code}|${label}`, [result, tier, code, label]).add();
    },
    nearLimit: (tier, type) => {
      const label = typeLabel(type);
      tally(nearLimit, `${tier}|${label}`, [tier, label]).add();
    },
    connection: (result, reason) => tally(connections, `${result}|${reason}`, [result, reason]).add(),
    disconnect: (reason) => tally(disconnects, reason, [reason]).add(),
    violation: (code, type) => {
      const label = typeLabel(type);
      tally(violations, `${code}|${label}`, [code, label]).add();
    },
    storeError: () => storeErrors.inc(),
    storeOutage: () => storeOutages.inc(),
    storeLatency: (seconds) => storeLatency.observe(seconds),
    close: () => {
      for (const stop of unpublish.splice(0)) stop();
    },
  };
}

/**
 * One label set of a counter this module created: counts in a plain number and adds them
 * to prom-client when the counter is collected. On a counter found in the registry that this
 * module did not create (nothing would flush it), every add goes to prom-client at once.
 */
class Tally {
  private count = 0;
  constructor(
    private readonly child: CounterChild,
    private readonly deferred: boolean,
  ) {}
  add(): void {
    if (this.deferred) this.count++;
    else this.child.inc();
  }
  flush(): void {
    if (this.count === 0) return;
    const count = this.count;
    this.count = 0;
    this.child.inc(count);
  }
}

/** The apps' sources of each gauge this module created, read and combined at each collection. */
const GAUGE_SOURCES = new WeakMap<object, Set<() => number>>();

/** A labelled gauge or counter, as the memory-store metrics use it. */
interface LabelledMetric {
  labels(...values: string[]): { set?(value: number): void; inc(value?: number): void };
}
/** The memory stores read at one collection, each with its `store` label. */
type StoresByLabel = Map<MemoryStoreFigures, 'memory' | 'fallback'>;
/** The apps' memory-store sources of each memory-store metric this module created. */
const STORE_SOURCES = new WeakMap<object, Set<MemoryStoresOf>>();
/** Per evictions counter, each store's evictions it has counted. */
const EVICTIONS_SEEN = new WeakMap<object, WeakMap<MemoryStoreFigures, number>>();

/** The tallies of each counter this module created, shared by every app in the process that uses it. */
const TALLIES = new WeakMap<object, Map<string, Tally>>();

/** The parts of prom-client used here. */
interface PromClient {
  Counter: new (config: object) => unknown;
  Gauge: new (config: object) => unknown;
  Histogram: new (config: object) => unknown;
  register: unknown;
}
