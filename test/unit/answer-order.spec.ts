import { describe, expect, it, jest } from '@jest/globals';
import { AnswerOrder } from '../../lib/connection/answer-order.js';

describe('AnswerOrder', () => {
  it('writes at once when nothing earlier is pending', () => {
    const order = new AnswerOrder();
    const out: string[] = [];
    const slot = order.open();
    order.write(slot, () => out.push('a'));
    order.done(slot);
    order.write(undefined, () => out.push('b'));
    expect(out).toEqual(['a', 'b']);
    expect(order.idle).toBe(true);
  });

  it('holds a later answer until every earlier message is answered, in arrival order', () => {
    const order = new AnswerOrder();
    const out: string[] = [];
    const [first, second, third] = [order.open(), order.open(), order.open()];
    order.write(third, () => out.push('third'));
    order.done(third);
    order.write(second, () => out.push('second'));
    expect(out).toEqual([]);
    order.write(first, () => out.push('first'));
    expect(out).toEqual(['first']);
    order.done(first);
    // The second message may still answer more: the third's answer waits for it.
    expect(out).toEqual(['first', 'second']);
    expect(order.idle).toBe(false);
    order.done(second);
    expect(out).toEqual(['first', 'second', 'third']);
    expect(order.idle).toBe(true);
  });

  it('closes once the pending messages are answered, or after the grace', () => {
    jest.useFakeTimers();
    try {
      const order = new AnswerOrder();
      const close = jest.fn();
      const slot = order.open();
      order.closeAfter(close, 2000);
      expect(close).not.toHaveBeenCalled();
      order.done(slot);
      expect(close).toHaveBeenCalledTimes(1);

      const stalled = new AnswerOrder();
      const late = jest.fn();
      stalled.open();
      stalled.closeAfter(late, 2000);
      jest.advanceTimersByTime(1999);
      expect(late).not.toHaveBeenCalled();
      jest.advanceTimersByTime(1);
      expect(late).toHaveBeenCalledTimes(1);

      const idle = new AnswerOrder();
      const now = jest.fn();
      idle.closeAfter(now, 2000);
      expect(now).toHaveBeenCalledTimes(1);
    } finally {
      jest.useRealTimers();
    }
  });

  it('forgets everything when the socket closes (no timer left)', () => {
    const order = new AnswerOrder();
    const close = jest.fn();
    order.open();
    order.closeAfter(close, 60_000);
    order.dispose();
    expect(order.idle).toBe(true);
    expect(close).not.toHaveBeenCalled();
  });
});
