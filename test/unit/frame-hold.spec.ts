import { describe, expect, it } from '@jest/globals';
import { FrameHold, HOLD_LIMIT } from '../../lib/connection/frame-hold.js';

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** A connection's count of waiting decisions, its hold, and what its frames did. */
function connection() {
  const count = { waiting: 0 };
  const errors: unknown[] = [];
  const hold = new FrameHold(count, (error) => errors.push(error));
  const ran: number[] = [];
  /** A frame whose decision waits (until `settle`) when `waits` is true. */
  const frame =
    (id: number, waits = false) =>
    () => {
      ran.push(id);
      if (waits) count.waiting++;
    };
  const settle = () => {
    count.waiting--;
    hold.settled();
  };
  return { count, hold, ran, frame, settle, errors };
}

describe('FrameHold', () => {
  it('runs a frame at once when no decision waits', () => {
    const { hold, ran, frame } = connection();
    hold.admit(frame(1));
    hold.admit(frame(2));
    expect(ran).toEqual([1, 2]);
    expect(hold.open).toBe(true);
  });

  it('holds frames while a decision waits and runs them in order on the turn after it settles', async () => {
    const { hold, ran, frame, settle } = connection();
    hold.admit(frame(1, true));
    hold.admit(frame(2));
    hold.admit(frame(3));
    expect(ran).toEqual([1]);
    expect(hold.size).toBe(2);
    settle();
    // Not in the settling job: the settled message's own handler goes first.
    expect(ran).toEqual([1]);
    await nextTurn();
    expect(ran).toEqual([1, 2, 3]);
    expect(hold.open).toBe(true);
  });

  it('stops at a released frame whose decision waits, keeping the later ones (and new ones) behind it', async () => {
    const { hold, ran, frame, settle } = connection();
    hold.admit(frame(1, true));
    hold.admit(frame(2, true));
    hold.admit(frame(3));
    settle();
    await nextTurn();
    expect(ran).toEqual([1, 2]);
    hold.admit(frame(4));
    expect(hold.size).toBe(2);
    settle();
    await nextTurn();
    expect(ran).toEqual([1, 2, 3, 4]);
  });

  it('keeps holding while another decision of the connection still waits', async () => {
    const { count, hold, ran, frame, settle } = connection();
    count.waiting = 2;
    hold.admit(frame(1));
    settle();
    await nextTurn();
    expect(ran).toEqual([]);
    settle();
    await nextTurn();
    expect(ran).toEqual([1]);
  });

  it(`releases every held frame at once when the ${HOLD_LIMIT}th arrives`, () => {
    const { hold, ran, frame } = connection();
    hold.admit(frame(0, true));
    for (let i = 1; i < HOLD_LIMIT; i++) hold.admit(frame(i, true));
    expect(ran).toEqual([0]);
    hold.admit(frame(HOLD_LIMIT, true));
    expect(ran).toEqual([...Array(HOLD_LIMIT + 1).keys()]);
    // Later frames are held again behind the ones now waiting.
    hold.admit(frame(HOLD_LIMIT + 1));
    expect(ran).toHaveLength(HOLD_LIMIT + 1);
  });

  it('reports a released frame that throws, and runs the frames after it', async () => {
    const { hold, ran, frame, settle, errors } = connection();
    hold.admit(frame(1, true));
    hold.admit(() => {
      throw new Error('handler threw');
    });
    hold.admit(frame(3));
    settle();
    await nextTurn();
    expect(ran).toEqual([1, 3]);
    expect(errors).toEqual([new Error('handler threw')]);
  });
});
