/**
 * Trackers and addresses blocked by an operator, by name (`ip:<key>` or `key:<name>`), each
 * until a wall-clock time (ms since the epoch, so that instances agree on it). Expired
 * entries are dropped when read; no timer is used.
 */
export class Blocks {
  private entries = new Map<string, number>();

  /** Names blocked now (an upper bound: some may have expired). */
  get size(): number {
    return this.entries.size;
  }

  set(name: string, until: number): void {
    this.entries.set(name, until);
  }

  delete(name: string): void {
    this.entries.delete(name);
  }

  /** A name's entry as it is held (expired or not), or undefined. */
  until(name: string): number | undefined {
    return this.entries.get(name);
  }

  /** Milliseconds left on a name's block, 0 when it is not blocked. */
  remaining(name: string, now = Date.now()): number {
    const until = this.entries.get(name);
    if (until === undefined) return 0;
    if (until <= now) {
      this.entries.delete(name);
      return 0;
    }
    return until - now;
  }

  /** Replaces every entry (from a shared store). */
  replace(entries: Readonly<Record<string, number>>): void {
    this.entries = new Map(Object.entries(entries));
  }

  /** The live blocks. */
  list(now = Date.now()): Record<string, number> {
    const live: Record<string, number> = {};
    for (const [name, until] of this.entries) if (until > now) live[name] = until;
    return live;
  }
}
