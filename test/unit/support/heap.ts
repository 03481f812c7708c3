import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * A full garbage collection, when one can be had: `global.gc` if Node was started with
 * `--expose-gc` (e.g. `NODE_OPTIONS="--experimental-vm-modules --expose-gc"`), else the
 * V8 flag set at run time. `undefined` if neither works: callers then measure without
 * forcing a collection and use a generous bound.
 */
export function fullGc(): (() => void) | undefined {
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === 'function') return () => (exposed as () => void)();
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? () => (gc as () => void)() : undefined;
  } catch {
    return undefined;
  }
}

/** Heap in use after a full collection (twice: weak references need a second pass). */
export function settledHeap(gc: (() => void) | undefined): number {
  if (gc) {
    gc();
    gc();
  }
  return process.memoryUsage().heapUsed;
}
