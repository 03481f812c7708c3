import type { Writable } from 'node:stream';
import type { RedisStoreClient } from './client-factory.js';

/**
 * The store's commands of one event-loop tick in one socket write. Without it, ioredis
 * writes each command to the socket as it is sent: one `write` system call per decision,
 * measured at 40 % of the client's CPU with 256 decisions in flight (the replies of one
 * socket read start as many new decisions in one tick). Before the first command of a tick
 * the client's socket is corked, and it is uncorked once the tick's synchronous work is
 * done (`process.nextTick`): the commands go out together, in the order sent, a few
 * microseconds later than one by one. No timer.
 *
 * At most `COMMANDS_PER_WRITE` commands share a write. Redis answers a connection's
 * commands one read (up to 16 KiB) at a time: a burst of a thousand slow decisions in one
 * write would hold back every answer until the first read's worth had run, long enough to
 * pass the deadline with no answer at all, which the breaker takes for an outage.
 *
 * A command sent while the connection has nothing in flight (ioredis's `commandQueue` is
 * empty: every earlier command has its answer) goes out at once, uncorked: it waits for no
 * other, and the next command of its tick corks. One decision at a time pays no tick of
 * delay (about 1 µs of its median latency here), while the commands that follow a socket
 * read full of answers still share writes.
 *
 * Not on a Cluster (commands go to several sockets, each client its own), nor while the
 * client is not ready. ioredis's auto-pipelining, which the store turns off, batches the
 * same way at a much higher cost per command (it made every limiter slower in our
 * benchmarks, `bench/README.md`).
 */
export class TickWrites {
  /** The socket corked in this tick, until the tick's end or `COMMANDS_PER_WRITE` commands. */
  private held: Writable | undefined;
  /** Commands written since the socket was corked. */
  private count = 0;

  constructor(private readonly client: RedisStoreClient) {}

  /** Call before writing a command: the first of a tick corks the socket until the tick ends. */
  hold(): void {
    if (this.held !== undefined) {
      if (++this.count < COMMANDS_PER_WRITE) return;
      // A write's worth: it goes now, and the next command corks again.
      this.release();
    }
    const client = this.client;
    if (client.isCluster || client.status !== 'ready') return;
    if ((client as { commandQueue?: { length: number } }).commandQueue?.length === 0) return;
    const stream = (client as { stream?: Writable }).stream;
    if (stream === undefined || typeof stream.cork !== 'function') return;
    stream.cork();
    this.held = stream;
    this.count = 0;
    process.nextTick(this.release);
  }

  private readonly release = (): void => {
    const stream = this.held;
    this.held = undefined;
    stream?.uncork();
  };
}

/** Most commands one socket write carries (see `TickWrites`). */
export const COMMANDS_PER_WRITE = 32;

/** One `TickWrites` per client, shared by every script defined on it. */
const perClient = new WeakMap<object, TickWrites>();

/** The `TickWrites` of a client. */
export function tickWritesOf(client: RedisStoreClient): TickWrites {
  let writes = perClient.get(client);
  if (writes === undefined) {
    writes = new TickWrites(client);
    perClient.set(client, writes);
  }
  return writes;
}
