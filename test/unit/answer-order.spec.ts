import { describe, expect, it, jest } from '@jest/globals';
import { AnswerOrder } from '../../lib/connection/answer-order.js';
import { settle, sleep } from '../support/ws-client.js';

describe('AnswerOrder', () => {
  it('writes at once when nothing earlier is pending', () => {
    const order = new AnswerOrder(2000);
    const out: string[] = [];
    const slot = order.open();
    order.write(slot, () => out.push('a'));
    order.done(slot);
    order.write(undefined, () => out.push('b'));
    expect(out).toEqual(['a', 'b']);
    expect(order.idle).toBe(true);
  });

  it('holds a later answer until every earlier message is answered, in arrival order', () => {
    const order = new AnswerOrder(2000);
    const out: string[] = [];
    const [first, second, third] = [order.open(), order.open(), order.open()];
    order.write(third, () => out.push('third'));
    order.done(third);
    order.write(second, () => out.push('second'));
    expect(out).toEqual([]);
    order.write(first, () => out.push('first'));
    expect(out).toEqual(['first']);
    order.done(first);
    // The second message may still be answered by its handler: the third's answer waits for it.
    expect(out).toEqual(['first', 'second']);
    expect(order.idle).toBe(false);
    order.done(second);
    expect(out).toEqual(['first', 'second', 'third']);
    expect(order.idle).toBe(true);
    order.dispose();
  });

  it('holds answers and the close at most holdMs, then releases them in order before the close', () => {
    jest.useFakeTimers();
    try {
      const order = new AnswerOrder(2000);
      const out: string[] = [];
      const stalled = order.open();
      const later = order.open();
      order.write(later, () => out.push('frame'));
      order.closeAfter(() => out.push('close'));
      jest.advanceTimersByTime(1999);
      expect(out).toEqual([]);
      jest.advanceTimersByTime(1);
      expect(out).toEqual(['frame', 'close']);
      expect(order.idle).toBe(true);
      order.done(stalled);
      expect(out).toEqual(['frame', 'close']);
      expect(jest.getTimerCount()).toBe(0);
    } finally {
      jest.useRealTimers();
    }
  });

  it('tells gaveUp how many messages a close leaves unanswered: waited for until holdMs, or given up before it', async () => {
    // Real timers: a message is given up by its arrival time (performance.now()), which fake
    // timers do not move. Each wait is at least three hold times; none has an upper bound. A
    // hold timer that fires late (a stall of this machine) waits its period once more, so the
    // waits that expect the hold to have run go on until it has (at most 10 s).
    const told: string[] = [];
    // Given up before the close (past its hold time while a later one waited), never answered.
    const first = new AnswerOrder(20, (n) => told.push(`lost ${n}`));
    first.open();
    first.done(first.open());
    await settle(() => first.idle, 0);
    expect(first.idle).toBe(true);
    first.closeAfter(() => told.push('close'));
    expect(told).toEqual(['lost 1', 'close']);
    // Given up, then answered before the close: nothing lost.
    told.length = 0;
    const second = new AnswerOrder(20, (n) => told.push(`lost ${n}`));
    const slow = second.open();
    second.done(second.open());
    await sleep(60);
    second.done(slow);
    second.closeAfter(() => told.push('close'));
    expect(told).toEqual(['close']);
    // Waited for by the close until holdMs: lost when it goes ahead.
    told.length = 0;
    const third = new AnswerOrder(20, (n) => told.push(`lost ${n}`));
    third.open();
    third.open();
    third.closeAfter(() => told.push('close'));
    await settle(() => told.length > 0, 0);
    expect(told).toEqual(['lost 2', 'close']);
    // A close with everything answered tells nothing.
    told.length = 0;
    const fourth = new AnswerOrder(20, (n) => told.push(`lost ${n}`));
    const only = fourth.open();
    fourth.closeAfter(() => told.push('close'));
    fourth.done(only);
    expect(told).toEqual(['close']);
  });

  it('closes once the pending messages are answered, at once when none is, and stops its timer', () => {
    jest.useFakeTimers();
    try {
      const order = new AnswerOrder(2000);
      const close = jest.fn();
      const slot = order.open();
      order.closeAfter(close);
      expect(close).not.toHaveBeenCalled();
      order.done(slot);
      expect(close).toHaveBeenCalledTimes(1);
      expect(jest.getTimerCount()).toBe(0);

      const idle = new AnswerOrder(2000);
      const now = jest.fn();
      idle.closeAfter(now);
      expect(now).toHaveBeenCalledTimes(1);

      const unordered = new AnswerOrder(0);
      const out: string[] = [];
      unordered.open();
      unordered.write(unordered.open(), () => out.push('at once'));
      expect(out).toEqual(['at once']);
    } finally {
      jest.useRealTimers();
    }
  });

  it('forgets everything when the socket closes (no timer left)', () => {
    jest.useFakeTimers();
    try {
      const order = new AnswerOrder(60_000);
      const close = jest.fn();
      order.open();
      order.closeAfter(close);
      order.dispose();
      expect(order.idle).toBe(true);
      expect(jest.getTimerCount()).toBe(0);
      expect(close).not.toHaveBeenCalled();
    } finally {
      jest.useRealTimers();
    }
  });
});
