import { describe, expect, it } from '@jest/globals';
import { CallGate } from '../../lib/storage/redis/call-gate.js';
import type { RedisStoreClient } from '../../lib/storage/redis/client-factory.js';
import { RedisStoreUnavailableError } from '../../lib/storage/redis/redis-store.error.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Blocks this process as a long synchronous handler would: timers cannot fire meanwhile. */
function block(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

/** A promise settled from outside. */
function deferred(): { promise: Promise<unknown>; resolve: (value: unknown) => void } {
  let resolve!: (value: unknown) => void;
  const promise = new Promise<unknown>((settle) => (resolve = settle));
  return { promise, resolve };
}

function gateOf(deadlineMs: number, failureThreshold = 1_000_000) {
  const client = { status: 'ready', isCluster: false } as unknown as RedisStoreClient;
  const changes: boolean[] = [];
  const gate = new CallGate({
    client,
    deadlineMs,
    failureThreshold,
    probeIntervalMs: 1_000_000,
    probeKey: 'probe',
    onChange: (available) => changes.push(available),
    onRecover: () => undefined,
  });
  return { gate, changes };
}

/**
 * The deadlines of `CallGate`: one timer for every call in flight (a queue in the order the
 * calls were sent), which must expire exactly the calls that got no answer in time.
 */
describe('CallGate deadlines', () => {
  it('of 3,000 calls, the 1,000 never answered fail at their deadline; the others get their replies', async () => {
    const { gate } = gateOf(30);
    const silent: ReturnType<typeof deferred>[] = [];
    const outcomes: Promise<string>[] = [];
    const late: boolean[] = [];
    for (let i = 0; i < 3000; i++) {
      const reply = deferred();
      // Every third call stays silent; the others answer at once or after 10 ms.
      if (i % 3 === 0) silent.push(reply);
      else if (i % 3 === 1) reply.resolve(i);
      else setTimeout(() => reply.resolve(i), 10);
      outcomes.push(
        gate
          .within(
            reply.promise,
            (value) => `reply ${String(value)}`,
            (_value, delivered) => {
              if (!delivered) late.push(true);
            },
          )
          .catch((error: unknown) => (error instanceof RedisStoreUnavailableError ? 'deadline' : 'other')),
      );
    }
    const results = await Promise.all(outcomes);
    expect(results.filter((result) => result === 'deadline')).toHaveLength(1000);
    expect(results.filter((result, i) => i % 3 !== 0 && result === `reply ${i}`)).toHaveLength(2000);
    // A reply after the deadline is told to `settled` as not delivered.
    for (const reply of silent) reply.resolve('late');
    await sleep(0);
    expect(late).toHaveLength(1000);
    gate.close();
  });

  it('calls sent later get deadlines of their own, counted from when they were sent', async () => {
    const { gate } = gateOf(40);
    const sentAt = performance.now();
    const first = gate.within(new Promise(() => undefined), () => 'never').catch(() => performance.now() - sentAt);
    await sleep(25);
    const second = gate.within(new Promise(() => undefined), () => 'never').catch(() => performance.now() - sentAt);
    const [a, b] = await Promise.all([first, second]);
    expect(a).toBeGreaterThanOrEqual(39);
    expect(b).toBeGreaterThanOrEqual(25 + 39);
    gate.close();
  });

  it('a timer that fired more than half a deadline late gives its call one more deadline, once', async () => {
    const { gate, changes } = gateOf(200, 1);
    const reply = deferred();
    let outcome = 'pending';
    const call = gate
      .within(reply.promise, (value) => `reply ${String(value)}`)
      .then(
        (result) => (outcome = result),
        (error: unknown) => (outcome = error instanceof RedisStoreUnavailableError ? 'deadline' : 'other'),
      );
    // The deadline timer fires 400 ms late (more than 1.5 deadlines after the call was
    // sent): the call waited on this process, not on Redis. Its deadline starts again.
    block(400);
    await sleep(20);
    expect(outcome).toBe('pending');
    expect(changes).toEqual([]);
    // Late again: the second deadline is the last; the call fails, and the miss counts.
    block(400);
    await sleep(20);
    reply.resolve('too late');
    await call;
    expect(outcome).toBe('deadline');
    expect(changes).toEqual([false]);
    gate.close();
  });

  it('a reply after an extended deadline started is delivered', async () => {
    const { gate } = gateOf(200);
    const reply = deferred();
    const call = gate.within(reply.promise, (value) => `reply ${String(value)}`);
    block(400);
    await sleep(20);
    reply.resolve('in time');
    await expect(call).resolves.toBe('reply in time');
    gate.close();
  });

  it('misses count towards the breaker: it opens after the threshold of calls expired in a row', async () => {
    const { gate, changes } = gateOf(20, 3);
    const calls: Promise<string>[] = [];
    for (let turn = 0; turn < 3; turn++) {
      calls.push(gate.within(new Promise(() => undefined), () => 'never').catch(() => 'x'));
      // The next call in a turn of the event loop of its own.
      await new Promise((resolve) => setImmediate(resolve));
    }
    await Promise.all(calls);
    expect(changes).toEqual([false]);
    expect(gate.isOpen).toBe(true);
    gate.close();
  });

  it('misses of calls sent in one turn count once: a burst behind one stall does not open the breaker', async () => {
    const { gate, changes } = gateOf(20, 3);
    const burst = Array.from({ length: 100 }, () =>
      gate.within(new Promise(() => undefined), () => 'never').catch((error: unknown) => error),
    );
    const outcomes = await Promise.all(burst);
    // Every call fails at its deadline; the breaker saw one failure.
    expect(outcomes.every((outcome) => outcome instanceof RedisStoreUnavailableError)).toBe(true);
    expect(changes).toEqual([]);
    expect(gate.isOpen).toBe(false);
    // Two more turns of silence make three failures in a row: it opens.
    for (let turn = 0; turn < 2; turn++) {
      await gate.within(new Promise(() => undefined), () => 'never').catch(() => 'x');
    }
    expect(changes).toEqual([false]);
    gate.close();
  });
});
