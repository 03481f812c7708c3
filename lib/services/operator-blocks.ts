import { MemoryRateLimitStore } from '../storage/memory/memory-store.js';
import type { MaybePromise, RateLimitStore } from '../storage/rate-limit-store.js';
import { Blocks, type Held } from './blocks.js';

/** How often blocks set on other instances are fetched from a shared store. */
const BLOCK_SYNC_MS = 1000;

/**
 * Operator blocks (`block`, `unblock`): kept in this process for the hot path, written to
 * the store, and, when the store shares them, fetched from it every second so that every
 * instance enforces a block within about a second.
 */
export class OperatorBlocks {
  private readonly blocks = new Blocks();
  /** Local block/unblock calls so far, and those whose store write is still in flight. */
  private edits = 0;
  private writes = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: RateLimitStore,
    private readonly warn: (message: string) => void,
  ) {}

  /** Whether any block may be in force (when not, no check is needed). */
  get active(): boolean {
    return this.blocks.size !== 0;
  }

  /**
   * Milliseconds left on the longer of a tracker's block and its address's (0 when
   * neither is blocked), both named by their tracker keys.
   */
  remainingFor(tracker: string | undefined, address: string | undefined): number {
    if (this.blocks.size === 0) return 0;
    const byTracker = tracker === undefined ? 0 : this.blocks.remaining(tracker);
    return Math.max(byTracker, address === undefined ? 0 : this.blocks.remaining(address));
  }

  async set(name: string, until: number): Promise<void> {
    const before = this.blocks.snapshot(name);
    this.blocks.set(name, until);
    await this.write(() => this.store.setBlock(name, until), name, before);
  }

  async delete(name: string): Promise<void> {
    const before = this.blocks.snapshot(name);
    this.blocks.delete(name);
    await this.write(() => this.store.deleteBlock(name), name, before);
  }

  list(): Readonly<Record<string, number>> {
    return this.blocks.list();
  }

  /** Fetches blocks set on other instances; starts doing so every second if the store shares them. */
  async sync(first: boolean): Promise<void> {
    let shared: Readonly<Record<string, number>> | undefined;
    const edits = this.edits;
    const quiet = this.writes === 0;
    try {
      shared = await this.store.listBlocks();
    } catch (error) {
      if (first) this.warn(`Could not read blocks from the store: ${(error as Error).message}`);
      if (!first) return;
    }
    // A list read while a local block or unblock was on its way may predate it: the next sync has it.
    if (shared !== undefined && quiet && this.writes === 0 && edits === this.edits) this.blocks.replace(shared);
    if (first && (shared !== undefined || !(this.store instanceof MemoryRateLimitStore))) {
      const timer = setInterval(() => void this.sync(false), BLOCK_SYNC_MS);
      timer.unref();
      this.timer = timer;
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /**
   * A block or unblock on its way to the store: a sync meanwhile must not undo it locally.
   * One the store refused is undone here too (`before`: the name's entry before it), so that
   * a call that rejects leaves this instance enforcing what the others do.
   */
  private async write(write: () => MaybePromise<void>, name: string, before: Held | undefined): Promise<void> {
    this.edits++;
    this.writes++;
    try {
      await write();
    } catch (error) {
      // Its deadline too: a wall-clock step since must not move it.
      this.blocks.restore(name, before);
      throw error;
    } finally {
      this.writes--;
    }
  }
}
