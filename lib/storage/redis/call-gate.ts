// Over 400 lines: one class, the gate every Redis call of the store passes (deadline queue,
// failure counting, circuit breaker, half-open probe), whose parts share its call state.
import type { Cluster } from 'ioredis';
import { performance } from 'node:perf_hooks';
import type { RedisStoreClient } from './client-factory.js';
import { RedisStoreUnavailableError } from './redis-store.error.js';
import { errorText } from '../../utils/error-text.js';

const noop = (): void => undefined;
/** How long the probe's key lives: it only has to be written. */
const PROBE_KEY_TTL_MS = 100;
/** The least time between two slot-map refreshes asked for by missed deadlines. */
const SLOTS_REFRESH_INTERVAL_MS = 1000;

/** A call in flight, waiting for its reply or its deadline. */
interface PendingCall {
  readonly sentAt: number;
  /** `CallGate.answers` when it was sent. */
  readonly answersAtSend: number;
  /** `CallGate.turn` when it was sent: calls of one turn of the event loop share it. */
  readonly turn: number;
  /** When its deadline started: when it was sent, or when it started again. */
  armedAt: number;
  /** Whether its deadline started again once. */
  extended: boolean;
  /** In the deadline queue (not answered, and not past its deadline). */
  queued: boolean;
  /** Answered by its reply, its failure or its deadline: the caller has its answer. */
  answered: boolean;
  readonly reject: (error: unknown) => void;
}

export interface CallGateOptions {
  readonly client: RedisStoreClient;
  /** The key the half-open probe writes (standalone and Sentinel; a Cluster's probe reads its state). */
  readonly probeKey: string;
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
 * calls in time fails the call without counting towards the breaker. Misses of calls sent in
 * one turn of the event loop, with no answer since, count once: they are one observation of
 * a silent Redis (a burst of 1,000 calls behind one 50 ms stall is not 1,000 failures).
 */
export class CallGate {
  private readonly client: RedisStoreClient;
  private readonly deadlineMs: number;
  private failures = 0;
  /** Set while the breaker is open: the error every call gets. */
  private openError: RedisStoreUnavailableError | undefined;
  private probeTimer: NodeJS.Timeout | undefined;
  private probing = false;
  /**
   * A probe's command not answered yet (past its deadline too): on one connection Redis
   * answers in order, so a new probe would only queue behind it. The next one is sent once
   * it is answered, or fails (see `probe`).
   */
  private probeUnanswered = false;
  private closed = false;
  /** The client's latest connection error since it was last ready (see `noteConnectionError`). */
  private connectionError: string | undefined;
  /** Calls whose deadline runs, oldest first from `callsHead` (see `arm`). */
  private readonly calls: PendingCall[] = [];
  private callsHead = 0;
  /** Set for the oldest queued deadline while calls are in flight. */
  private deadlineTimer: NodeJS.Timeout | undefined;
  /** Calls that got their answer in time (a count, so a reply costs no clock read). */
  private answers = 0;
  /** The turn of the event loop calls are sent in: bumped by the first call of a turn. */
  private turn = 0;
  /** A call was sent in this turn (cleared by an immediate, once the turn's I/O is done). */
  private turnOpen = false;
  private readonly closeTurn = (): void => {
    this.turnOpen = false;
  };
  /** When a missed deadline last asked a Cluster for its slot map (see `refreshSlots`). */
  private slotsRefreshedAt = -Infinity;
  /** The turn of the last miss counted as a failure. */
  private failedTurn = -1;
  /**
   * Deadlines missed while Redis was answering other calls in time: failed calls that did
   * not count towards opening the breaker (see `answeredSince`).
   */
  busyMisses = 0;

  constructor(private readonly options: CallGateOptions) {
    this.client = options.client;
    this.deadlineMs = options.deadlineMs;
  }

  /** While the breaker is open, the error every call gets (the outage's cause). */
  get outage(): RedisStoreUnavailableError | undefined {
    return this.openError;
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
      const last = this.connectionError === undefined ? '' : `; last error: ${this.connectionError}`;
      this.trip(new Error(`the Redis connection is ${status}${last}`));
      throw this.openError ?? new RedisStoreUnavailableError(`the Redis connection is ${status}${last}`);
    }
  }

  /**
   * Keeps the client's latest connection error (or, with `undefined` at `ready`, forgets
   * it): an outage found while the client is not ready names it as its cause.
   */
  noteConnectionError(error: unknown): void {
    this.connectionError = error === undefined ? undefined : messageOf(error);
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
    if (!this.turnOpen) {
      this.turnOpen = true;
      this.turn++;
      setImmediate(this.closeTurn);
    }
    return new Promise<T>((resolve, reject) => {
      const now = performance.now();
      const call: PendingCall = {
        sentAt: now,
        answersAtSend: this.answers,
        turn: this.turn,
        armedAt: now,
        extended: false,
        queued: true,
        answered: false,
        reject,
      };
      this.arm(call);
      sent.then(
        (reply) => {
          const delivered = !call.answered;
          if (delivered) {
            this.settle(call);
            this.answers++;
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
          if (!call.answered) {
            this.settle(call);
            this.failed(error);
            reject(new RedisStoreUnavailableError(`Redis failed: ${messageOf(error)}`, { cause: error }));
          }
          settled?.(undefined, false);
        },
      );
    });
  }

  /**
   * Queues a call's deadline. Calls are queued in the order their deadlines start, and every
   * deadline is equally long, so one timer, set for the oldest, serves them all: a call
   * costs a slot in an array instead of a timer of its own (measured: a third of the store's
   * own work per decision).
   */
  private arm(call: PendingCall): void {
    this.calls.push(call);
    if (this.deadlineTimer === undefined) this.setDeadlineTimer(call.armedAt + this.deadlineMs);
  }

  private setDeadlineTimer(at: number): void {
    this.deadlineTimer = setTimeout(() => this.sweep(), Math.max(0, at - performance.now()));
    // The socket keeps the process alive while a call is in flight; the timer need not.
    this.deadlineTimer.unref();
  }

  /**
   * Marks a call answered (its reply or its failure), takes it out of the deadline queue, and
   * drops the calls out of it at the head of the queue (replies come about in the order calls
   * were sent, so the queue stays short).
   */
  private settle(call: PendingCall): void {
    call.answered = true;
    call.queued = false;
    this.dropSettled();
  }

  private dropSettled(): void {
    const calls = this.calls;
    let head = this.callsHead;
    while (head < calls.length && !calls[head]!.queued) head++;
    if (head === calls.length) {
      calls.length = 0;
      head = 0;
    } else if (head >= 1024 && head * 2 >= calls.length) {
      calls.splice(0, head);
      head = 0;
    }
    this.callsHead = head;
  }

  /** The deadline timer fired: the calls past their deadline expire; the oldest left sets it again. */
  private sweep(): void {
    this.deadlineTimer = undefined;
    const firedAt = performance.now();
    const expired: PendingCall[] = [];
    const calls = this.calls;
    let oldest: PendingCall | undefined;
    for (let i = this.callsHead; i < calls.length; i++) {
      const call = calls[i]!;
      if (!call.queued) continue;
      if (call.armedAt + this.deadlineMs > firedAt) {
        oldest = call;
        break;
      }
      // Out of the queue; a call whose deadline starts again is queued anew.
      call.queued = false;
      expired.push(call);
    }
    this.dropSettled();
    if (oldest !== undefined) this.setDeadlineTimer(oldest.armedAt + this.deadlineMs);
    if (expired.length === 0) return;
    // When this process itself was busy past the deadline, the replies may be waiting in the
    // socket already: let the next I/O phase deliver them before calling Redis late.
    setImmediate(() => {
      for (const call of expired) this.expire(call, firedAt);
    });
  }

  /** A call past its deadline, after the I/O phase that followed the timer. */
  private expire(call: PendingCall, firedAt: number): void {
    if (call.answered) return;
    // The timer fired more than half a deadline late: this process was blocked, and the call
    // (or its bytes, still in this process's socket buffer) waited on it, not on Redis. The
    // deadline starts again, once, from now.
    if (!call.extended && firedAt - call.armedAt > 1.5 * this.deadlineMs) {
      call.extended = true;
      call.armedAt = performance.now();
      call.queued = true;
      this.arm(call);
      return;
    }
    call.answered = true;
    if (this.client.isCluster) this.refreshSlots();
    const error = new RedisStoreUnavailableError(`Redis did not answer within ${this.deadlineMs} ms`);
    if (this.answeredSince(call)) this.busyMisses++;
    else if (call.turn !== this.failedTurn) {
      // One failure per turn of calls: the others of its turn missed for the same silence.
      this.failedTurn = call.turn;
      this.failed(error);
    }
    call.reject(error);
  }

  /**
   * On a Cluster, a missed deadline asks for the slot map again (at most once a second): a
   * master that froze or was cut off keeps its TCP connections, so ioredis, which refreshes
   * the map on a MOVED reply or a closed connection only, would go on sending its slots'
   * calls to it after its replica was promoted, until it woke.
   */
  private refreshSlots(): void {
    const now = performance.now();
    if (now - this.slotsRefreshedAt < SLOTS_REFRESH_INTERVAL_MS) return;
    this.slotsRefreshedAt = now;
    (this.client as Cluster).refreshSlotsCache(noop);
  }

  /**
   * Whether Redis answered another call in time since `call` was sent: it is alive and
   * answering in order, and a call that missed its deadline meanwhile waited behind others
   * (in Redis's queue or this process's), which is load, not an outage. Such a miss fails its call (the
   * fail mode decides) without counting towards opening the breaker. Not on a Cluster, where
   * one master's answers say nothing of another's.
   */
  private answeredSince(call: PendingCall): boolean {
    return this.answers > call.answersAtSend && !this.client.isCluster;
  }

  private succeeded(): void {
    this.failures = 0;
    // A closed gate's breaker stays as it was: no listener hears of a closed store's recovery.
    if (this.openError !== undefined && !this.closed) this.recover();
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
   * Half-open: one call within the deadline decides whether the breaker closes. A write of
   * `probeKey` (`SET ... PX`), which must succeed: Redis refuses it, as it would refuse a
   * decision, while it is a replica (a demoted master still answers PING: READONLY), out of
   * memory under `noeviction` (OOM), running a long script (BUSY), loading its data
   * (LOADING) or unable to persist (MISCONF); any of those keeps the breaker open instead of
   * closing it for the next decision to open it again. On a Cluster, `CLUSTER INFO` of a
   * random node, which must say `cluster_state:ok` (a Cluster that lost a master refuses
   * every key with CLUSTERDOWN but still answers PING).
   */
  probe(): void {
    if (this.openError === undefined || this.probing || this.closed) return;
    if (this.client.status !== 'ready') {
      this.scheduleProbe();
      return;
    }
    // The last probe is still unanswered (Redis frozen with its TCP connection up): its answer
    // or failure sends the next one. Probes sent meanwhile would pile up in the connection,
    // one per interval for as long as the freeze lasts. Not on a Cluster, whose probe goes to
    // a random node: another node may answer.
    if (this.probeUnanswered) return;
    this.probing = true;
    const cluster = this.client.isCluster;
    const command = cluster
      ? this.client.call('CLUSTER', 'INFO')
      : this.client.call('SET', this.options.probeKey, '1', 'PX', String(PROBE_KEY_TTL_MS));
    if (!cluster) {
      this.probeUnanswered = true;
      const answered = (): void => {
        this.probeUnanswered = false;
        // Answered (or failed) after its deadline, the breaker still open: probe again now.
        // Redis has just answered, so a probe within the deadline may close the breaker at
        // once (a failure reschedules it, and a client that is not ready waits an interval).
        if (!this.probing) this.probe();
      };
      command.then(answered, answered);
    }
    const probe = cluster
      ? this.within(command, (reply) => {
          if (!String(reply).includes('cluster_state:ok')) throw new Error('the Cluster state is not ok');
        })
      : this.within(command, () => undefined);
    probe.then(
      () => {
        this.probing = false;
      },
      () => {
        this.probing = false;
        if (!this.probeUnanswered) this.scheduleProbe();
      },
    );
  }

  /** Stops the probe; every later call is refused. */
  close(): void {
    this.closed = true;
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
    // Calls still in flight keep their deadlines; the timer stops by itself after them.
    if (this.callsHead === this.calls.length) {
      clearTimeout(this.deadlineTimer);
      this.deadlineTimer = undefined;
    }
  }
}

export function messageOf(error: unknown): string {
  return errorText(error);
}

export { noop };
