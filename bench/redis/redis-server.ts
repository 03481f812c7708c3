/**
 * A private `redis-server` for the benchmarks: on a free loopback port (never 6379), no
 * persistence, started by the parent and stopped at the end of the part, also on error.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createConnection, createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** A running redis-server. */
export interface RedisServer {
  readonly port: number;
  readonly version: string;
  /** The server's process id (under a wrapper such as valgrind, the same process). */
  readonly pid: number;
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (asked from the kernel, then released). */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer();
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
      });
    });
    if (port !== 6379 && port !== 0) return port;
  }
  throw new Error('no free port');
}

/**
 * Sends one inline command over a fresh connection and returns the raw reply (enough for
 * PING, INFO and SHUTDOWN: the benchmarks' own traffic goes through ioredis).
 */
export function rawCommand(port: number, command: string, timeoutMs = 2000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    let reply = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`redis ${command}: no reply within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.on('data', (chunk: string) => {
      reply += chunk;
      if (complete(reply)) {
        clearTimeout(timer);
        socket.end();
        resolve(reply);
      }
    });
    socket.write(`${command}\r\n`);
  });
}

/** Whether a RESP reply is complete (simple string, error, integer or one bulk string). */
function complete(reply: string): boolean {
  const line = reply.indexOf('\r\n');
  if (line < 0) return false;
  if (reply[0] !== '$') return true;
  const length = Number(reply.slice(1, line));
  return length < 0 || reply.length >= line + 2 + length + 2;
}

/**
 * The server the benchmarks start: `WSRL_BENCH_REDIS_SERVER` (a path: e.g. the Redis 8 that
 * `.ci/redis-field-ttls` builds, to measure on a server with hash-field TTLs), else the
 * `redis-server` on the PATH.
 */
const REDIS_SERVER = process.env['WSRL_BENCH_REDIS_SERVER'] || 'redis-server';

/**
 * Starts redis-server on a free loopback port and waits until it answers PING; `under`, a
 * command it runs under (e.g. valgrind and its options).
 */
export async function startRedis(under: readonly string[] = []): Promise<RedisServer> {
  const port = await freePort();
  const command = [...under, REDIS_SERVER];
  const child: ChildProcess = spawn(
    command[0]!,
    [
      ...command.slice(1),
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--daemonize',
      'no',
      '--loglevel',
      'warning',
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  let exited = false;
  let spawnError: Error | undefined;
  child.once('exit', () => (exited = true));
  child.once('error', (error) => {
    // ENOENT: redis-server is not installed (the benchmark needs it on the PATH).
    spawnError = error;
    exited = true;
  });
  // Whatever happens to this process, the server goes with it.
  const kill = (): void => {
    if (!exited) child.kill('SIGKILL');
  };
  process.once('exit', kill);
  const stop = async (): Promise<void> => {
    process.off('exit', kill);
    if (exited || child.exitCode !== null) return;
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await gone;
    clearTimeout(timer);
  };
  try {
    // Under valgrind a server takes seconds to start.
    const deadline = Date.now() + (under.length > 0 ? 60_000 : 10_000);
    for (;;) {
      if (spawnError) throw new Error(`cannot start redis-server: ${spawnError.message}`, { cause: spawnError });
      if (exited) throw new Error(`redis-server on port ${port} exited at start`);
      try {
        if ((await rawCommand(port, 'PING', 500)).startsWith('+PONG')) break;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer in time`);
      await sleep(50);
    }
    const info = await rawCommand(port, 'INFO server');
    const version = /redis_version:(\S+)/.exec(info)?.[1] ?? 'unknown';
    return { port, version, pid: child.pid!, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** Commands Redis ran (scripts' own `redis.call`s included) and its CPU time, from INFO. */
export interface RedisCounters {
  /** Calls per command, from `INFO commandstats`. */
  calls: Record<string, number>;
  /** Microseconds Redis spent executing each command, from `INFO commandstats` (a script's own calls included in its EVALSHA). */
  usec: Record<string, number>;
  /** used_cpu_user + used_cpu_sys of the server, in microseconds. */
  cpuMicros: number;
}

/** Parses `INFO commandstats` and `INFO cpu` (one reply holding both, or two). */
export function parseCounters(info: string): RedisCounters {
  const calls: Record<string, number> = {};
  const usec: Record<string, number> = {};
  for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm)) {
    calls[match[1]!] = Number(match[2]);
    usec[match[1]!] = Number(match[3]);
  }
  const user = Number(/^used_cpu_user:([\d.]+)/m.exec(info)?.[1] ?? NaN);
  const sys = Number(/^used_cpu_sys:([\d.]+)/m.exec(info)?.[1] ?? NaN);
  return { calls, usec, cpuMicros: (user + sys) * 1e6 };
}

/**
 * Commands between two snapshots, by name, leaving out the observer's own (`info`), and
 * the server's CPU time between them.
 */
export function counterDelta(
  before: RedisCounters,
  after: RedisCounters,
): { commands: number; byCommand: Record<string, number>; cpuMicros: number; scriptMicros: number } {
  const byCommand: Record<string, number> = {};
  let commands = 0;
  for (const [name, count] of Object.entries(after.calls)) {
    if (name === 'info') continue;
    const delta = count - (before.calls[name] ?? 0);
    if (delta > 0) {
      byCommand[name] = delta;
      commands += delta;
    }
  }
  const scripts = (after.calls.evalsha ?? 0) - (before.calls.evalsha ?? 0);
  const scriptUsec = (after.usec.evalsha ?? 0) - (before.usec.evalsha ?? 0);
  return {
    commands,
    byCommand,
    cpuMicros: after.cpuMicros - before.cpuMicros,
    scriptMicros: scripts > 0 ? scriptUsec / scripts : Number.NaN,
  };
}
