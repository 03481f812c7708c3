import { fork, type ChildProcess } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';

/** Options of a benchmark child process. */
export interface ChildOptions {
  /** Node flags of the child, e.g. `--expose-gc`. */
  execArgv?: string[];
  /** The child is killed and the promise rejected after this long. */
  timeoutMs: number;
}

/**
 * Runs a compiled benchmark script in its own Node process and resolves with the first
 * `{ result }` message it sends over IPC. Each child starts with a cold JIT and an empty
 * heap, so one measurement cannot shape the next.
 */
export function runChild<T>(script: URL, args: readonly string[], options: ChildOptions): Promise<T> {
  const child = fork(script, [...args], { execArgv: options.execArgv ?? [], stdio: 'inherit' });
  return awaitResult<T>(child, options.timeoutMs, script.pathname);
}

/** Node flags that write a CPU profile named `name` into `dir`, or none without a directory. */
export function profileFlags(dir: string | undefined, name: string): string[] {
  return dir ? ['--cpu-prof', `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${name}.cpuprofile`] : [];
}

/** Starts a long-lived child (a server) without waiting for its result. */
export function startChild(script: URL, args: readonly string[], execArgv: string[] = []): ChildProcess {
  return fork(script, [...args], { execArgv, stdio: 'inherit' });
}

/** The next message of the given kind from a child, or a rejection on exit or timeout. */
export function nextMessage<T>(child: ChildProcess, kind: string, timeoutMs: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no "${kind}" message from child ${child.pid} within ${timeoutMs} ms`));
    }, timeoutMs);
    const onMessage = (message: unknown): void => {
      const typed = message as { kind?: string; payload?: T };
      if (typed.kind !== kind) return;
      cleanup();
      resolve(typed.payload as T);
    };
    const onExit = (code: number | null): void => {
      cleanup();
      reject(new Error(`child ${child.pid} exited with ${String(code)} before sending "${kind}"`));
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
    };
    child.on('message', onMessage);
    child.on('exit', onExit);
  });
}

/** Waits for a child to exit, killing it (by its own handle) if it takes longer than `graceMs`. */
export function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

async function awaitResult<T>(child: ChildProcess, timeoutMs: number, name: string): Promise<T> {
  try {
    const result = await nextMessage<T>(child, 'result', timeoutMs);
    await stopChild(child);
    return result;
  } catch (error) {
    child.kill('SIGKILL');
    throw new Error(`${name}: ${(error as Error).message}`, { cause: error });
  }
}

/** Sends a typed message to the parent process (children only). */
export function sendToParent(kind: string, payload: unknown): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (!process.send) {
      reject(new Error('this script runs as a child of bench/run.js'));
      return;
    }
    process.send({ kind, payload }, undefined, {}, (error) => (error ? reject(error) : resolve()));
  });
}

/**
 * A server child's side of the parent's protocol: reports `ready` with the app's port, then
 * answers `mark-end` with the CPU time used since the last `mark-start`, and on `stop` closes
 * the app and disconnects (which lets the child exit).
 */
export async function serveMeasured(app: { close(): Promise<void> }, port: number): Promise<void> {
  let cpuAtStart = process.cpuUsage();
  process.on('message', (message: { kind?: string }) => {
    if (message.kind === 'mark-start') {
      cpuAtStart = process.cpuUsage();
    } else if (message.kind === 'mark-end') {
      const used = process.cpuUsage(cpuAtStart);
      void sendToParent('cpu', { cpuMicros: used.user + used.system });
    } else if (message.kind === 'stop') {
      void app.close().then(() => process.disconnect());
    }
  });
  await sendToParent('ready', { port });
}

/**
 * A load child's measured window: waits out the warm-up, calls `count(true)`, tells the
 * parent it is `measuring`, waits `durationMs`, then calls `count(false)`. Resolves with the
 * window's length and this process's CPU time in it (µs).
 */
export async function measuredWindow(
  warmupMs: number,
  durationMs: number,
  count: (on: boolean) => void,
): Promise<{ elapsedMs: number; cpuMicros: number }> {
  await sleep(warmupMs);
  count(true);
  const cpuAtStart = process.cpuUsage();
  const start = performance.now();
  await sendToParent('measuring', {});
  await sleep(durationMs);
  const elapsedMs = performance.now() - start;
  const cpu = process.cpuUsage(cpuAtStart);
  count(false);
  return { elapsedMs, cpuMicros: cpu.user + cpu.system };
}
