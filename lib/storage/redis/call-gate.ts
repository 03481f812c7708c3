import { performance } from 'node:perf_hooks';
import type { RedisStoreClient } from './client-factory.js';
import { RedisStoreUnavailableError } from './redis-store.error.js';

const noop = (): void => undefined;

/** `ROLE` refused by the server itself (renamed or disabled, as some managed services do): it answered. */
const roleUnsupported = (error: unknown): null => {
  if ((error as { name?: string })?.name === 'ReplyError' && !String((error as Error).message).startsWith('READONLY')) {
    return null;
  }
  throw error;
};

export interface CallGateOptions {
  readonly client: RedisStoreClient;
  readonly deadlineMs: number;
  readonly failureThreshold: number;
  readonly probeIntervalMs: number;
  /** Told each time the breaker opens (false) or closes (true). */
  readonly onChange: (available: boolean, cause?: unknown) => void;
  /** Runs when the breaker closes again, after `onChange(true)`. */
  readonly onRecover: () => void;
}

/**
 * Every Redis call of the store passes here: refused at once while the circuit breaker is
 * open (or the client is not ready), bounded by the deadline otherwise. Consecutive failures
 * open the breaker; a half-open probe every `probeIntervalMs` closes it.
 *
 * The deadline measures Redis, not this process: a timer that fires late (the event loop was
 * blocked) gives its call one more deadline from then, and a miss while Redis answers other
 * calls in time fails the call without counting towards the breaker.
 */
export class CallGate {
  private readonly client: RedisStoreClient;
  private readonly deadlineMs: number;
  private failures = 0;
  /** Set while the breaker is open: the error every call gets. */
  private openError: RedisStoreUnavailableError | undefined;
  private probeTimer: NodeJS.Timeout | undefined;
  private probing = false;
  private closed = false;
  /** When (performance.now()) a call last got its answer in time. */
  private lastAnswerAt = -Infinity;
  /**
   * Deadlines missed while Redis was answering other calls in time: failed calls that did
   * not count towards opening the breaker (see `answeredSince`).
   */
  busyMisses = 0;

  constructor(private readonly options: CallGateOptions) {
    this.client = options.client;
    this.deadlineMs = options.deadlineMs;
  }

  /** True while the breaker is open. */
  get isOpen(): boolean {
    return this.openError !== undefined;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Refuses at once, without sending, while the breaker is open or the client not ready. */
  check(): void {
    if (this.closed) throw new RedisStoreUnavailableError('the Redis store is closed');
    if (this.openError !== undefined) throw this.openError;
    const status = this.client.status;
    if (status !== 'ready') {
      this.trip(new Error(`the Redis connection is ${status}`));
      throw this.openError ?? new RedisStoreUnavailableError(`the Redis connection is ${status}`);
    }
  }

  /**
   * Settles with the parsed reply, or rejects when Redis fails or stays silent past the
   * deadline. `settled` runs once the command itself settles (possibly after the deadline),
   * told whether the caller got that reply.
   */
  within<T>(
    sent: Promise<unknown>,
    parse: (reply: unknown, delivered: boolean) => T,
    settled?: (reply: unknown, delivered: boolean) => void,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let done = false;
      const sentAt = performance.now();
      let armedAt = sentAt;
      let extended = false;
      const expire = (): void => {
        const firedAt = performance.now();
        // When this process itself was busy past the deadline, the reply may be waiting in the
        // socket already: let the next I/O phase deliver it before calling Redis late.
        setImmediate(() => {
          if (done) return;
          // The timer fired more than half a deadline late: this process was blocked, and the
          // call (or its bytes, still in this process's socket buffer) waited on it, not on
          // Redis. The deadline starts again, once, from now.
          if (!extended && firedAt - armedAt > 1.5 * this.deadlineMs) {
            extended = true;
            armedAt = performance.now();
            timer = setTimeout(expire, this.deadlineMs);
            timer.unref();
            return;
          }
          done = true;
          const error = new RedisStoreUnavailableError(`Redis did not answer within ${this.deadlineMs} ms`);
          if (this.answeredSince(sentAt)) this.busyMisses++;
          else this.failed(error);
          reject(error);
        });
      };
      let timer = setTimeout(expire, this.deadlineMs);
      // The socket keeps the process alive while a call is in flight; the timer need not.
      timer.unref();
      sent.then(
        (reply) => {
          const delivered = !done;
          if (delivered) {
            done = true;
            clearTimeout(timer);
            this.lastAnswerAt = performance.now();
            try {
              resolve(parse(reply, true));
              this.succeeded();
            } catch (error) {
              this.failed(error);
              reject(new RedisStoreUnavailableError(`Redis answered unexpectedly`, { cause: error }));
            }
          }
          // A late answer counts for nothing: a Redis slower than the deadline is no use to a
          // decision, and resetting the failure count on it would keep the breaker from ever
          // opening under steady latency above the deadline. Only an answer in time (a
          // decision's, or the probe's) closes the breaker.
          settled?.(reply, delivered);
        },
        (error: unknown) => {
          if (!done) {
            done = true;
            clearTimeout(timer);
            this.failed(error);
            reject(new RedisStoreUnavailableError(`Redis failed: ${messageOf(error)}`, { cause: error }));
          }
          settled?.(undefined, false);
        },
      );
    });
  }

  /**
   * Whether Redis answered another call in time since `since`: it is alive and answering in
   * order, and a call that missed its deadline meanwhile waited behind others (in Redis's
   * queue or this process's), which is load, not an outage. Such a miss fails its call (the
   * fail mode decides) without counting towards opening the breaker. Not on a Cluster, where
   * one master's answers say nothing of another's.
   */
  private answeredSince(since: number): boolean {
    return this.lastAnswerAt > since && !this.client.isCluster;
  }

  private succeeded(): void {
    this.failures = 0;
    if (this.openError !== undefined) this.recover();
  }

  private failed(cause: unknown): void {
    if (++this.failures >= this.options.failureThreshold) this.trip(cause);
  }

  /** Opens the breaker: every call is refused at once until a probe succeeds. */
  trip(cause: unknown): void {
    if (this.openError !== undefined || this.closed) return;
    this.openError = new RedisStoreUnavailableError(`Redis is unavailable (${messageOf(cause)})`, { cause });
    this.options.onChange(false, cause);
    this.scheduleProbe();
  }

  private recover(): void {
    this.openError = undefined;
    this.failures = 0;
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
    this.options.onChange(true);
    this.options.onRecover();
  }

  private scheduleProbe(): void {
    if (this.probeTimer !== undefined || this.closed) return;
    this.probeTimer = setTimeout(() => {
      this.probeTimer = undefined;
      this.probe();
    }, this.options.probeIntervalMs);
    this.probeTimer.unref();
  }

  /**
   * Half-open: one call within the deadline decides whether the breaker closes: `ROLE`, which
   * must say `master` (a demoted master answers, but refuses every write with READONLY; a
   * server that refuses ROLE itself counts as reachable), or on a Cluster `CLUSTER INFO` of a
   * random node, which must say `cluster_state:ok` (a Cluster that lost a master refuses every
   * key with CLUSTERDOWN but still answers PING).
   */
  probe(): void {
    if (this.openError === undefined || this.probing || this.closed) return;
    if (this.client.status !== 'ready') {
      this.scheduleProbe();
      return;
    }
    this.probing = true;
    const probe = this.client.isCluster
      ? this.within(this.client.call('CLUSTER', 'INFO'), (reply) => {
          if (!String(reply).includes('cluster_state:ok')) throw new Error('the Cluster state is not ok');
        })
      : this.within(this.client.call('ROLE').catch(roleUnsupported), (reply) => {
          // A demoted master still answers PING; closing the breaker on it would only fail the next decision.
          if (Array.isArray(reply) && reply[0] !== 'master') throw new Error(`Redis answers as a ${String(reply[0])}`);
        });
    probe.then(
      () => {
        this.probing = false;
      },
      () => {
        this.probing = false;
        this.scheduleProbe();
      },
    );
  }

  /** Stops the probe; every later call is refused. */
  close(): void {
    this.closed = true;
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
  }
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export { noop };
