/**
 * SettleOrder (lib/connection/settle-order.ts): promises settle in the order they were put
 * in, whatever order they resolve or reject in; a rejection waiting its turn is not reported
 * unhandled; with a stall time (trackers), one that never settles holds the later ones only
 * until nothing has settled for that long, and not the ones put in after that; without one
 * (a store's decisions: the review of d80aab6 found a Redis call longer than the stall time
 * overtaken by refusals the block cache answered at once), for as long as it takes.
 */
import { describe, expect, it } from '@jest/globals';
import { SettleOrder } from '../../lib/connection/settle-order.js';

function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('SettleOrder', () => {
  it('settles in the order put in, resolved last first; waiting until the last settled', async () => {
    const order = new SettleOrder();
    const parts = [deferred<number>(), deferred<number>(), deferred<number>()];
    const settled: string[] = [];
    parts.forEach((part, i) =>
      order.after(part.promise).then(
        (value) => settled.push(`ok ${i}:${value}`),
        (error: Error) => settled.push(`error ${i}:${error.message}`),
      ),
    );
    expect(order.waiting).toBe(true);
    parts[2]!.resolve(2);
    parts[1]!.reject(new Error('one'));
    await turn();
    expect(settled).toEqual([]);
    parts[0]!.resolve(0);
    await turn();
    expect(settled).toEqual(['ok 0:0', 'error 1:one', 'ok 2:2']);
    expect(order.waiting).toBe(false);
  });

  it('a rejection waiting its turn for a turn and more is not unhandled', async () => {
    const unhandled: unknown[] = [];
    const listener = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', listener);
    try {
      const order = new SettleOrder();
      const first = deferred<number>();
      const outcome = order.after(first.promise);
      const failing = order.after(Promise.reject(new Error('late')));
      await turn();
      await turn();
      first.resolve(1);
      expect(await outcome).toBe(1);
      await expect(failing).rejects.toThrow('late');
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', listener);
    }
  });

  it('one that never settles holds the later ones only for the stall time, and not the ones after', async () => {
    const order = new SettleOrder(200);
    const hung = new Promise<number>(() => undefined);
    order.after(hung);
    const settled: number[] = [];
    void order.after(Promise.resolve(1)).then((value) => settled.push(value));
    void order.after(Promise.resolve(2)).then((value) => settled.push(value));
    await turn();
    await turn();
    expect(settled).toEqual([]);
    for (let waited = 0; settled.length < 2 && waited < 5000; waited += 20) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(settled).toEqual([1, 2]);
    expect(order.waiting).toBe(false);
    // After the stall: a new one settles as soon as it is resolved.
    void order.after(Promise.resolve(3)).then((value) => settled.push(value));
    await turn();
    expect(settled).toEqual([1, 2, 3]);
  });

  it("without a stall time (a store's decisions, which settle within their own deadline), one that has not settled holds the later ones", async () => {
    const order = new SettleOrder();
    const slow = deferred<number>();
    order.after(slow.promise).then(undefined, () => undefined);
    const settled: number[] = [];
    void order.after(Promise.resolve(1)).then((value) => settled.push(value));
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(settled).toEqual([]);
    expect(order.waiting).toBe(true);
    slow.resolve(0);
    await turn();
    expect(settled).toEqual([1]);
  });

  it('a line longer than the stall time that keeps moving is not cut short by it', async () => {
    // Each settles 500 ms after the one before (2.5 s in all); none waits the stall time of 2 s.
    const order = new SettleOrder(2000);
    const parts = Array.from({ length: 6 }, () => deferred<number>());
    const settled: number[] = [];
    for (const [i, part] of parts.entries()) void order.after(part.promise).then(() => settled.push(i));
    // The last first, so that a stall would show as it settling out of order.
    parts[5]!.resolve(5);
    for (let i = 0; i < 5; i++) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      parts[i]!.resolve(i);
    }
    await turn();
    expect(settled).toEqual([0, 1, 2, 3, 4, 5]);
  });
});
