import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ensureBuilt, ROOT } from './build.js';

/** A NestJS app running in its own process, talking to the test over IPC. */
export interface ChildApp {
  readonly process: ChildProcess;
  readonly port: number;
  readonly url: string;
  /** Asks the app something; it answers `{ id, ... }` messages to `{ id, type, ... }` requests. */
  request<T = unknown>(type: string, payload?: Record<string, unknown>): Promise<T>;
  /** Stops it (SIGTERM, then SIGKILL after a grace period) and waits for its exit. */
  stop(): Promise<void>;
}

/**
 * Compiles an app written against the built package (imported as `nestjs-ws-rate-limit`)
 * into `.tmp/child-apps/<hash>/`, once per source text. The app must send
 * `{ type: 'listening', port }` over IPC when it listens, and answer requests.
 */
export function buildChildApp(source: string): string {
  ensureBuilt('package');
  const hash = createHash('sha1').update(source).digest('hex').slice(0, 12);
  const dir = join(ROOT, '.tmp', 'child-apps', hash);
  const entry = join(dir, 'out', 'main.js');
  if (existsSync(entry)) return entry;
  mkdirSync(dir, { recursive: true });
  // No package.json here: the repository's own (type module, name nestjs-ws-rate-limit)
  // is the nearest, so the app imports the built package by its name, as users do.
  writeFileSync(join(dir, 'main.ts'), source);
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      extends: '../../../tsconfig.json',
      compilerOptions: { rootDir: '.', outDir: 'out', paths: {}, declaration: false, sourceMap: false },
      include: ['main.ts'],
    }),
  );
  execFileSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', dir], { stdio: 'pipe' });
  return entry;
}

/** Starts a compiled child app with extra environment variables. */
export function startChildApp(entry: string, env: Record<string, string> = {}): Promise<ChildApp> {
  const child = fork(entry, [], {
    env: { ...process.env, NODE_OPTIONS: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let nextId = 1;
  const pending = new Map<number, (value: unknown) => void>();
  child.on('message', (message: { id?: number }) => {
    if (message.id !== undefined) pending.get(message.id)?.(message);
    pending.delete(message.id!);
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`child app did not start:\n${output}`));
    }, 30_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`child app exited with ${code}:\n${output}`));
    });
    child.on('message', (message: { type?: string; port?: number }) => {
      if (message.type !== 'listening') return;
      clearTimeout(timer);
      const port = message.port!;
      resolve({
        process: child,
        port,
        url: `ws://127.0.0.1:${port}`,
        request: <T>(type: string, payload: Record<string, unknown> = {}) =>
          new Promise<T>((answer) => {
            const id = nextId++;
            pending.set(id, answer as (value: unknown) => void);
            child.send({ id, type, ...payload });
          }),
        stop: async () => {
          if (child.exitCode !== null || child.signalCode !== null) return;
          child.kill('SIGTERM');
          const grace = setTimeout(() => child.kill('SIGKILL'), 5_000);
          await exited;
          clearTimeout(grace);
        },
      });
    });
  });
}

/** The resident set size of a process, from /proc (Linux), in bytes. */
export function rssOf(pid: number): number {
  const status = execFileSync('cat', [`/proc/${pid}/status`]).toString();
  const kb = /VmRSS:\s+(\d+) kB/.exec(status);
  return kb ? Number(kb[1]) * 1024 : NaN;
}
