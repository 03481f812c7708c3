/** Helpers shared by the Sentinel tests: waiting for a state, failovers, subscriptions. */
import { performance } from 'node:perf_hooks';
import { rawCommand } from '../support/redis-server.js';
import { sleep } from './helpers.js';

/** Polls `check` every 50 ms until it holds; throws naming `what` (and the last error) after `timeoutMs`. */
export async function waitUntil(
  what: string,
  check: () => Promise<boolean> | boolean,
  timeoutMs: number,
): Promise<void> {
  const until = performance.now() + timeoutMs;
  let last: unknown;
  while (performance.now() < until) {
    try {
      if (await check()) return;
    } catch (error) {
      last = error;
    }
    await sleep(50);
  }
  throw new Error(`${what} not reached within ${timeoutMs} ms${last ? `: ${String(last)}` : ''}`);
}

/** SENTINEL FAILOVER, retried while the sentinel has no fresh view of the replica yet (NOGOODSLAVE, INPROG). */
export async function forceFailover(sentinelPort: number, name: string): Promise<void> {
  const until = performance.now() + 20_000;
  for (;;) {
    try {
      await rawCommand(sentinelPort, ['SENTINEL', 'FAILOVER', name]);
      return;
    } catch (error) {
      if (!/NOGOODSLAVE|INPROG/.test(String(error)) || performance.now() > until) throw error;
      await sleep(200);
    }
  }
}

/** The port of the master a sentinel names for `name` (NaN when it knows none). */
export async function masterPortOf(sentinelPort: number, name: string): Promise<number> {
  const addr = (await rawCommand(sentinelPort, ['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name])) as string[] | null;
  return Number(addr?.[1] ?? NaN);
}

/** Pub/sub connections a sentinel holds (CLIENT LIST lines with the P flag). */
export async function subscribers(sentinelPort: number): Promise<number> {
  const list = String(await rawCommand(sentinelPort, ['CLIENT', 'LIST'], 1500));
  return list.split('\n').filter((line) => /\bflags=\S*P/.test(line)).length;
}
