import { Manager } from 'socket.io-client';

/**
 * Closes, at the end of a test file, every socket.io-client connection the file opened and
 * waits until none has a request in flight. Over long-polling, engine.io-client closes only
 * once its pending POST has drained, and then sends the close packet on a new
 * XMLHttpRequest, whose constructor calls `require('http')`: when that drain came after the
 * file's teardown, Jest printed "You are trying to `import` a file after the Jest environment
 * has been torn down" and set exit code 1 with every test passed (the CI of 3fb84a5 failed
 * so). The Jest environment (test/support/jest-environment.mjs) calls `settleIoClients`
 * through the global below before the file's modules are torn down.
 *
 * Imported by test/support/io-client.ts, so by every file that uses its clients; a test file
 * that calls `io()` itself imports this module for its side effect.
 */

/** The global the environment reads; set once this module is loaded in a test file. */
export const SETTLE_GLOBAL = '__wsrlSettleIoClients';

type EngineState = { readyState: string; transport?: { readyState?: string } };

/**
 * The managers opened, held weakly (a test opening thousands of clients, as the churn tests
 * do, must not keep them: they measure the heap), pruned of collected and settled ones as the
 * set grows.
 */
const managers = new Set<WeakRef<Manager>>();
const tracked = new WeakSet<Manager>();
let pruneAt = 64;

const settled = (manager: Manager): boolean => {
  const engine = manager.engine as unknown as EngineState | undefined;
  // Once engine and transport are closed, engine.io-client starts no request (a poll or a
  // write); one still in flight ends without loading a module.
  return (
    engine === undefined ||
    (engine.readyState === 'closed' &&
      engine.transport?.readyState !== 'open' &&
      engine.transport?.readyState !== 'opening')
  );
};

function prune(): void {
  for (const ref of managers) {
    const manager = ref.deref();
    if (manager !== undefined && !settled(manager)) continue;
    managers.delete(ref);
    if (manager !== undefined) tracked.delete(manager);
  }
  pruneAt = Math.max(64, 2 * managers.size);
}

const PATCHED = Symbol.for('wsrl.io-settle.patched');
const proto = Manager.prototype as Manager & { [PATCHED]?: true };
if (!proto[PATCHED]) {
  const open = proto.open;
  proto.open = function (this: Manager, ...args: Parameters<Manager['open']>) {
    if (!tracked.has(this)) {
      if (managers.size >= pruneAt) prune();
      tracked.add(this);
      managers.add(new WeakRef(this));
    }
    return open.apply(this, args);
  };
  proto[PATCHED] = true;
}

/**
 * Closes every connection still open and waits (at most `timeoutMs`) until each engine and
 * its transport have closed. Returns how many had not at the end.
 */
export async function settleIoClients(timeoutMs = 5000): Promise<number> {
  const live = [...managers].map((ref) => ref.deref()).filter((manager) => manager !== undefined);
  managers.clear();
  // `_close` is public in socket.io-client 4 typings: stops reconnection, closes the engine.
  for (const manager of live) manager._close();
  const deadline = Date.now() + timeoutMs;
  let open = live.filter((manager) => !settled(manager));
  while (open.length > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    open = open.filter((manager) => !settled(manager));
  }
  return open.length;
}

(globalThis as Record<string, unknown>)[SETTLE_GLOBAL] = settleIoClients;
