/**
 * lib/utils/loop-timeout.ts: `loopTimeout` (a timeout that fires more than half its period
 * late waits its period once more, only once) and `LoopClock` (the time the event loop ran:
 * stalls taken off, never running backwards, also for readings taken after a stall before
 * its beat has come). Real timers; a stall is a busy-wait of this process.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { performance } from 'node:perf_hooks';
import { LoopClock, loopTimeout } from '../../lib/utils/loop-timeout.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const stall = (ms: number): void => {
  const until = performance.now() + ms;
  while (performance.now() < until);
};

describe('LoopClock', () => {
  const clocks: LoopClock[] = [];
  afterEach(() => {
    for (const clock of clocks.splice(0)) clock.stop();
  });
  const watching = (): LoopClock => {
    const clock = new LoopClock();
    clocks.push(clock);
    clock.watch();
    return clock;
  };

  it('runs with performance.now while the loop runs (never faster)', async () => {
    const clock = watching();
    const [loop0, wall0] = [clock.now(), performance.now()];
    await sleep(300);
    const loop = clock.now() - loop0;
    const wall = performance.now() - wall0;
    expect(loop).toBeLessThanOrEqual(wall + 1);
    // Only a stall of the machine itself (more than two beats) is taken off.
    expect(loop).toBeGreaterThan(0);
  });

  it('takes a stall off, and never runs backwards: readings before the beat that ends it, and after', async () => {
    const clock = watching();
    await sleep(60);
    const before = clock.now();
    const wallBefore = performance.now();
    stall(500);
    // Read in the same turn as the stall's end, before any beat has seen it.
    const right = clock.now();
    const readings = [right];
    for (let i = 0; i < 5; i++) {
      await sleep(20);
      readings.push(clock.now());
    }
    const wall = performance.now() - wallBefore;
    for (let i = 1; i < readings.length; i++) expect(readings[i]).toBeGreaterThanOrEqual(readings[i - 1]!);
    expect(right).toBeGreaterThanOrEqual(before);
    // Of the 500 ms stall at most two beats count (plus the loop's own time since).
    expect(right - before).toBeLessThanOrEqual(100 + 1);
    expect(readings.at(-1)! - before).toBeLessThan(wall - 300);
  });

  it('runs as performance.now less the stalls it saw once stopped', async () => {
    const clock = watching();
    await sleep(60);
    stall(400);
    await sleep(80);
    clock.stop();
    const [loop0, wall0] = [clock.now(), performance.now()];
    await sleep(50);
    expect(clock.now() - loop0).toBeCloseTo(performance.now() - wall0, 0);
  });
});

describe('loopTimeout', () => {
  it('fires once its time has passed with the loop running; its timer keeps nothing alive', async () => {
    let fired = 0;
    const started = performance.now();
    const timeout = loopTimeout(() => fired++, 50);
    expect(timeout.hasRef()).toBe(false);
    while (fired === 0 && performance.now() - started < 5000) await sleep(10);
    expect(fired).toBe(1);
    expect(performance.now() - started).toBeGreaterThanOrEqual(49);
  });

  it('fired more than half its period late (a stall), waits its period once more, then fires', async () => {
    let firedAt = 0;
    const timeout = loopTimeout(() => (firedAt = performance.now()), 100);
    stall(300);
    const stallEnd = performance.now();
    await sleep(30);
    // The late firing came and waited again.
    expect(firedAt).toBe(0);
    for (let i = 0; i < 500 && firedAt === 0; i++) await sleep(10);
    expect(firedAt - stallEnd).toBeGreaterThanOrEqual(99);
    timeout.clear();
  });

  it('waits once more only once: late again, it fires', async () => {
    let fired = 0;
    loopTimeout(() => fired++, 100);
    stall(300);
    await new Promise<void>((resolve) => setImmediate(resolve));
    stall(300);
    for (let i = 0; i < 100 && fired === 0; i++) await sleep(10);
    expect(fired).toBe(1);
  });

  it('restarted, fires its period from the restart; restarted after it fired, fires again', async () => {
    const fired: number[] = [];
    const timeout = loopTimeout(() => fired.push(performance.now()), 80);
    await sleep(40);
    const restartedAt = performance.now();
    timeout.restart();
    for (let i = 0; i < 500 && fired.length === 0; i++) await sleep(10);
    expect(fired[0]! - restartedAt).toBeGreaterThanOrEqual(79);
    timeout.restart();
    for (let i = 0; i < 500 && fired.length === 1; i++) await sleep(10);
    expect(fired).toHaveLength(2);
    timeout.clear();
  });

  it('cleared, never fires (also while waiting once more)', async () => {
    let fired = 0;
    const timeout = loopTimeout(() => fired++, 40);
    stall(100);
    await sleep(10);
    timeout.clear();
    await sleep(150);
    expect(fired).toBe(0);
  });
});
