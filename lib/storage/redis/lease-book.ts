import type { CallGate } from './call-gate.js';
import type { RedisStoreClient } from './client-factory.js';
import { clockKeyOf } from './redis-keys.js';

type ScriptCall = (...args: string[]) => Promise<unknown>;

/** What this instance holds on one concurrency key. */
interface LeaseEntry {
  /** Units per lease name, as this process knows them. */
  readonly held: Map<string, number>;
  /** Consumes in flight on the key: the key is only touched, not synced, meanwhile. */
  pending: number;
  /** Redis may differ from `held` (a call failed or timed out): sync at the next chance. */
  dirty: boolean;
}

export interface LeaseBookOptions {
  readonly client: RedisStoreClient;
  readonly gate: CallGate;
  /** The `leases` script. */
  readonly leases: ScriptCall;
  readonly instanceId: string;
  readonly leaseTtlMs: number;
  readonly appClock: (() => number) | undefined;
}

const noop = (): void => undefined;
/** The first wait before dirty keys are synced again, doubled after each try up to the most. */
const DIRTY_RETRY_FIRST_MS = 250;
const DIRTY_RETRY_MOST_MS = 2000;

/**
 * The open-connection leases this instance holds in Redis, per concurrency key: kept alive
 * by a refresh every third of the lease TTL (an unref'd timer that runs only while leases
 * are held), brought back in line with Redis after a failed call or an outage (a key Redis
 * may not know right is synced again within 250 ms, then at doubling waits up to 2 s, until
 * it is: a Cluster slot whose master died often never opens the breaker whose recovery
 * would resync it), and given back when the store closes.
 */
export class LeaseBook {
  private readonly leases = new Map<string, LeaseEntry>();
  private timer: NodeJS.Timeout | undefined;
  /** Set while dirty keys wait to be synced again (see `retryDirty`). */
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelayMs = DIRTY_RETRY_FIRST_MS;
  private closed = false;

  constructor(private readonly options: LeaseBookOptions) {}

  get size(): number {
    return this.leases.size;
  }

  /** A consume on these keys is about to be sent. */
  begin(keys: readonly string[]): void {
    for (const key of keys) this.entry(key).pending++;
  }

  /** A consume begun with `begin` settled: `allowed` when Redis took the leases. */
  settled(
    keys: readonly string[],
    costs: readonly number[],
    lease: string,
    allowed: boolean,
    delivered: boolean,
  ): void {
    keys.forEach((key, i) => {
      const entry = this.entry(key);
      if (entry.pending > 0) entry.pending--;
      if (delivered && allowed) entry.held.set(lease, (entry.held.get(lease) ?? 0) + costs[i]!);
      // A call that failed or answered too late may have taken a slot nobody will give back.
      else if (!delivered) this.markEntryDirty(entry);
      this.dropIfIdle(key);
    });
  }

  /** Forgets a lease's units at once (before Redis is told). */
  forget(keys: readonly string[], costs: readonly number[], lease: string): void {
    keys.forEach((key, i) => {
      const entry = this.leases.get(key);
      if (entry === undefined) return;
      const units = (entry.held.get(lease) ?? 0) - costs[i]!;
      if (units > 0) entry.held.set(lease, units);
      else entry.held.delete(lease);
    });
  }

  /** Redis may not know what this instance holds on these keys: sync them at the next chance. */
  markDirty(keys: readonly string[]): void {
    for (const key of keys) this.markEntryDirty(this.entry(key));
  }

  /** The keys were reset: this instance holds nothing on them any more. */
  reset(keys: readonly string[]): void {
    for (const key of keys) {
      const entry = this.leases.get(key);
      if (entry === undefined) continue;
      if (entry.pending === 0) {
        this.leases.delete(key);
      } else {
        // A consume still in flight settles on this entry: keep it, holding nothing, to be synced.
        entry.held.clear();
        this.markEntryDirty(entry);
      }
    }
  }

  dropIfIdle(key: string): void {
    const entry = this.leases.get(key);
    if (entry !== undefined && entry.held.size === 0 && entry.pending === 0 && !entry.dirty) this.leases.delete(key);
    if (this.leases.size === 0 && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /**
   * Every entry, not only dirty ones: while the breaker was open nothing refreshed this
   * instance's expiry, so other instances may have dropped its leases as a dead instance's.
   */
  resyncAll(): void {
    for (const [key, entry] of this.leases) {
      this.sync(key, entry.held, entry.pending > 0 ? 'touch' : 'sync').catch(noop);
    }
  }

  /** Stops the refresh and gives back every lease (best effort, within the deadline). */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.timer = undefined;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const { gate, client } = this.options;
    if (!gate.isOpen && client.status === 'ready' && this.leases.size > 0) {
      await Promise.allSettled([...this.leases.keys()].map((key) => this.sync(key, new Map(), 'sync')));
    }
    this.leases.clear();
  }

  private entry(key: string): LeaseEntry {
    let entry = this.leases.get(key);
    if (entry === undefined) {
      entry = { held: new Map(), pending: 0, dirty: false };
      this.leases.set(key, entry);
      if (this.timer === undefined && !this.closed) {
        // Timers take at most 2^31 - 1 ms.
        const period = Math.min(2_147_483_647, Math.max(1, Math.floor(this.options.leaseTtlMs / 3)));
        this.timer = setInterval(() => this.refresh(), period);
        this.timer.unref();
      }
    }
    return entry;
  }

  /** Every third of the lease TTL: keeps this instance's leases alive, and exact. */
  private refresh(): void {
    const { gate, client } = this.options;
    if (gate.isOpen || gate.isClosed || client.status !== 'ready') return;
    for (const [key, entry] of this.leases) {
      this.sync(key, entry.held, entry.pending > 0 ? 'touch' : 'sync').then(() => this.dropIfIdle(key), noop);
    }
  }

  private async sync(key: string, held: ReadonlyMap<string, number>, mode: 'sync' | 'touch'): Promise<void> {
    const { appClock, instanceId, leaseTtlMs } = this.options;
    const args = [appClock !== undefined ? '2' : '1', key];
    if (appClock !== undefined) args.push(clockKeyOf(key));
    args.push(appClock !== undefined ? String(appClock()) : '', instanceId, String(leaseTtlMs), mode);
    if (mode === 'sync') for (const [lease, units] of held) args.push(lease, String(units));
    const entry = this.leases.get(key);
    try {
      await this.options.gate.within(this.options.leases(...args), noop);
      if (mode === 'sync' && entry !== undefined) entry.dirty = false;
    } catch (error) {
      if (entry !== undefined) this.markEntryDirty(entry);
      throw error;
    }
  }

  private markEntryDirty(entry: LeaseEntry): void {
    entry.dirty = true;
    if (this.retryTimer !== undefined || this.closed) return;
    this.retryTimer = setTimeout(() => this.retryDirty(), this.retryDelayMs);
    this.retryTimer.unref();
  }

  /**
   * Syncs the dirty keys with no consume in flight (one in flight settles its key itself);
   * tries again later while any stays dirty (the breaker open, the client not ready, or a
   * sync that failed), at doubling waits.
   */
  private retryDirty(): void {
    this.retryTimer = undefined;
    let waiting: LeaseEntry | undefined;
    const { gate, client } = this.options;
    const canCall = !gate.isOpen && !gate.isClosed && client.status === 'ready';
    for (const [key, entry] of this.leases) {
      if (!entry.dirty) continue;
      if (!canCall || entry.pending > 0) {
        waiting = entry;
        continue;
      }
      // A failure marks the entry dirty again, which schedules the next try; a success
      // brings the wait back to its first length.
      this.sync(key, entry.held, 'sync').then(() => {
        this.retryDelayMs = DIRTY_RETRY_FIRST_MS;
        this.dropIfIdle(key);
      }, noop);
    }
    this.retryDelayMs = Math.min(DIRTY_RETRY_MOST_MS, this.retryDelayMs * 2);
    if (waiting !== undefined) this.markEntryDirty(waiting);
  }
}
