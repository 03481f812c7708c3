/**
 * H-redis, H-cluster and H-sentinel of shared/RELIABILITY.md: real `redis-server` processes on free
 * loopback ports, with the faults the store tests inject (kill, restart, freeze). Nothing
 * here ever touches port 6379 or a Redis the machine already runs. Every process started is
 * stopped by the returned `stop()`, and killed when the test process exits if a test forgot.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

/** A running `redis-server` and the faults it can be put through. */
export interface RedisServer {
  readonly port: number;
  /** `redis://127.0.0.1:<port>` */
  readonly url: string;
  /** The pid of the current process (changes on `restart`). */
  readonly pid: number;
  readonly process: ChildProcess;
  /** Sends a signal, e.g. `SIGKILL` for "down"; returns at once. */
  kill(signal?: NodeJS.Signals): void;
  /** Ends the server (SIGTERM, SIGKILL after 2 s) and removes its directory; idempotent. */
  stop(): Promise<void>;
  /**
   * Starts a new server on the same port (killing the current one if it still runs); with
   * `binary`, that server from then on (a server upgraded in place).
   */
  restart(binary?: string): Promise<void>;
  /** SIGSTOP: the server is frozen, TCP stays up. */
  pause(): void;
  /** SIGCONT. */
  resume(): void;
  /** Sends one command on a fresh connection and returns the reply (errors as thrown Error). */
  command(...args: string[]): Promise<RespReply>;
}

/** A three-master Cluster. */
export interface RedisCluster {
  readonly nodes: readonly RedisServer[];
  /** `{ host, port }` of each master, for `new Cluster(...)`. */
  readonly startupNodes: readonly { host: string; port: number }[];
  stop(): Promise<void>;
}

/** A decoded RESP reply. */
export type RespReply = string | number | null | RespReply[];

const HOST = '127.0.0.1';
const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const child of live) {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

/** A port nobody listens on now: listen on port 0, read it, close. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer();
      server.once('error', reject);
      server.listen(0, HOST, () => {
        const address = server.address();
        const chosen = typeof address === 'object' && address ? address.port : 0;
        server.close(() => resolve(chosen));
      });
    });
    // Never 6379 (a Redis the machine runs), and leave room for nothing else special.
    if (port !== 6379 && port > 0) return port;
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Encodes a command as a RESP array of bulk strings. */
function encode(args: readonly string[]): string {
  let out = `*${args.length}\r\n`;
  for (const arg of args) out += `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`;
  return out;
}

/** Parses one RESP2 reply at `offset`; returns undefined while incomplete. */
function parse(buffer: Buffer, offset: number): { value: RespReply | Error; end: number } | undefined {
  const lineEnd = buffer.indexOf('\r\n', offset);
  if (lineEnd < 0) return undefined;
  const type = String.fromCharCode(buffer[offset]!);
  const line = buffer.toString('utf8', offset + 1, lineEnd);
  const next = lineEnd + 2;
  switch (type) {
    case '+':
      return { value: line, end: next };
    case '-':
      return { value: new Error(line), end: next };
    case ':':
      return { value: Number(line), end: next };
    case '$': {
      const length = Number(line);
      if (length < 0) return { value: null, end: next };
      if (buffer.length < next + length + 2) return undefined;
      return { value: buffer.toString('utf8', next, next + length), end: next + length + 2 };
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return { value: null, end: next };
      const items: RespReply[] = [];
      let at = next;
      for (let i = 0; i < count; i++) {
        const item = parse(buffer, at);
        if (!item) return undefined;
        if (item.value instanceof Error) return item;
        items.push(item.value);
        at = item.end;
      }
      return { value: items, end: at };
    }
    default:
      return { value: new Error(`unexpected RESP type ${type}`), end: buffer.length };
  }
}

/** One command on a fresh loopback connection, with a timeout. */
export function rawCommand(port: number, args: readonly string[], timeoutMs = 2000): Promise<RespReply> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host: HOST, port });
    let data = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new Error(`redis ${port}: ${args[0]} timed out`)), timeoutMs);
    const finish = (result: RespReply | Error) => {
      clearTimeout(timer);
      socket.destroy();
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    socket.once('error', (error) => finish(error));
    socket.on('data', (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      const reply = parse(data, 0);
      if (reply) finish(reply.value);
    });
    socket.once('connect', () => socket.write(encode(args)));
  });
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (error) {
      last = error;
    }
    await sleep(20);
  }
  throw new Error(`${what} not reached within ${timeoutMs} ms${last ? `: ${(last as Error).message}` : ''}`);
}

interface SpawnOptions {
  port: number;
  dir: string;
  args: readonly string[];
  binary: string;
}

/**
 * The `redis-server` every test starts: `WSRL_TEST_REDIS_SERVER` (a path, to run the suite
 * against another server version), else the one on the PATH.
 */
export const DEFAULT_REDIS_SERVER = process.env['WSRL_TEST_REDIS_SERVER'] || 'redis-server';

/**
 * A `redis-server` with hash-field TTLs (Redis 7.4+), or undefined when this machine has
 * none: `WSRL_TEST_REDIS_FIELD_TTLS` (a path), else what `.ci/redis-field-ttls` builds (into
 * `WSRL_REDIS_FIELD_TTLS_DIR`, else `~/.cache/nestjs-ws-rate-limit/redis-8.0.2`).
 */
export function fieldTtlRedisServer(): string | undefined {
  const named = process.env['WSRL_TEST_REDIS_FIELD_TTLS'];
  if (named) return named;
  const cache = process.env['XDG_CACHE_HOME'] || join(homedir(), '.cache');
  const dir = process.env['WSRL_REDIS_FIELD_TTLS_DIR'] || join(cache, 'nestjs-ws-rate-limit', 'redis-8.0.2');
  const built = join(dir, 'redis-server');
  return existsSync(built) ? built : undefined;
}

function spawnServer({ port, dir, args, binary }: SpawnOptions): { child: ChildProcess; output: string[] } {
  const child = spawn(
    binary,
    [
      '--port',
      String(port),
      '--bind',
      HOST,
      '--save',
      '',
      '--appendonly',
      'no',
      '--enable-debug-command',
      'local',
      '--repl-diskless-sync-delay',
      '0',
      '--dir',
      dir,
      ...args,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const output: string[] = [];
  const keep = (chunk: Buffer) => {
    output.push(chunk.toString());
    if (output.length > 50) output.shift();
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  child.once('error', (error) => output.push(`spawn error: ${error.message}`));
  live.add(child);
  child.once('exit', () => live.delete(child));
  return { child, output };
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function startServer(
  port: number,
  dir: string,
  args: readonly string[],
  ownsDir: boolean,
  binary = DEFAULT_REDIS_SERVER,
): Promise<RedisServer> {
  installExitHook();
  let current = spawnServer({ port, dir, args, binary });
  let stopped = false;

  const ready = async (spawned: { child: ChildProcess; output: string[] }) => {
    try {
      await waitFor(
        `redis-server on ${port} answering PING`,
        async () => {
          if (spawned.child.exitCode !== null) throw new Error(`exited: ${spawned.output.join('').slice(-500)}`);
          return (await rawCommand(port, ['PING'], 500)) === 'PONG';
        },
        10_000,
      );
    } catch (error) {
      spawned.child.kill('SIGKILL');
      throw error;
    }
  };

  const kill = async (child: ChildProcess) => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    try {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
    await exited(child);
  };

  await ready(current);

  const server: RedisServer = {
    port,
    url: `redis://${HOST}:${port}`,
    get pid() {
      return current.child.pid ?? -1;
    },
    get process() {
      return current.child;
    },
    kill(signal: NodeJS.Signals = 'SIGKILL') {
      current.child.kill(signal);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      const child = current.child;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGCONT');
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
        await exited(child);
        clearTimeout(timer);
      }
      if (ownsDir) rmSync(dir, { recursive: true, force: true });
    },
    async restart(upgrade?: string) {
      await kill(current.child);
      if (upgrade !== undefined) binary = upgrade;
      current = spawnServer({ port, dir, args, binary });
      await ready(current);
    },
    pause() {
      current.child.kill('SIGSTOP');
    },
    resume() {
      current.child.kill('SIGCONT');
    },
    async command(...commandArgs: string[]) {
      return rawCommand(port, commandArgs);
    },
  };
  return server;
}

/**
 * Starts a standalone `redis-server` on a free loopback port and waits until it answers
 * PING. Extra `args` are appended to the command line; `binary` is the server to run
 * (default `DEFAULT_REDIS_SERVER`).
 */
export async function startRedis(args: readonly string[] = [], binary?: string): Promise<RedisServer> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'wsrl-redis-'));
  return startServer(port, dir, args, true, binary);
}

/**
 * Starts three masters with `--cluster-enabled yes` (each with an explicit free bus port),
 * joins them with `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`, and
 * waits until every node reports `cluster_state:ok`. The nodes' cluster config files live
 * in one temporary directory that `stop()` removes, so a node `restart()`ed rejoins with its
 * slots. `nodeTimeoutMs` is `cluster-node-timeout` (how soon a dead master is marked failed).
 */
export async function startCluster({ nodeTimeoutMs = 2000 }: { nodeTimeoutMs?: number } = {}): Promise<RedisCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'wsrl-cluster-'));
  const nodes: RedisServer[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((node) => node.stop()));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      let bus = await freePort();
      while (bus === port) bus = await freePort();
      nodes.push(
        await startServer(
          port,
          dir,
          [
            '--cluster-enabled',
            'yes',
            '--cluster-port',
            String(bus),
            '--cluster-config-file',
            join(dir, `nodes-${port}.conf`),
            '--cluster-node-timeout',
            String(nodeTimeoutMs),
          ],
          false,
        ),
      );
    }
    await clusterCli([
      'create',
      ...nodes.map((node) => `${HOST}:${node.port}`),
      '--cluster-replicas',
      '0',
      '--cluster-yes',
    ]);
    await waitFor(
      'cluster_state:ok on every node',
      async () => {
        for (const node of nodes) {
          const info = await rawCommand(node.port, ['CLUSTER', 'INFO'], 500);
          if (typeof info !== 'string' || !info.includes('cluster_state:ok')) return false;
        }
        return true;
      },
      15_000,
    );
  } catch (error) {
    await stop();
    throw error;
  }
  return { nodes, startupNodes: nodes.map((node) => ({ host: HOST, port: node.port })), stop };
}

/** Runs `redis-cli --cluster <args>` and resolves with its output; rejects on a non-zero exit. */
export function clusterCli(args: readonly string[], timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('redis-cli', ['--cluster', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(output);
      else reject(new Error(`redis-cli --cluster ${args[0]} failed (${code}): ${output.slice(-500)}`));
    });
  });
}

/** H-sentinel: a master, one replica and one sentinel (quorum 1) watching them. */
export interface RedisSentinelSetup {
  readonly master: RedisServer;
  readonly replica: RedisServer;
  readonly sentinel: RedisServer;
  /** The name the sentinel monitors the master under. */
  readonly name: string;
  stop(): Promise<void>;
}

/**
 * Starts a master, a replica of it (waiting for `master_link_status:up`), and a sentinel
 * with `down-after-milliseconds 1000` and `failover-timeout 5000`, all on free loopback
 * ports. The sentinel's config file lives in a temporary directory that `stop()` removes.
 */
export async function startSentinel(name = 'wsrl'): Promise<RedisSentinelSetup> {
  const servers: RedisServer[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'wsrl-sentinel-'));
  const stop = async () => {
    await Promise.all(servers.map((server) => server.stop()));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const master = await startRedis();
    servers.push(master);
    const replica = await startRedis(['--replicaof', HOST, String(master.port)]);
    servers.push(replica);
    await waitFor(
      'replica in sync',
      async () =>
        String(await rawCommand(replica.port, ['INFO', 'replication'], 500)).includes('master_link_status:up'),
      10_000,
    );
    const port = await freePort();
    const conf = join(dir, 'sentinel.conf');
    writeFileSync(
      conf,
      [
        `port ${port}`,
        `bind ${HOST}`,
        `dir ${dir}`,
        `sentinel monitor ${name} ${HOST} ${master.port} 1`,
        `sentinel down-after-milliseconds ${name} 1000`,
        `sentinel failover-timeout ${name} 5000`,
        '',
      ].join('\n'),
    );
    installExitHook();
    const child = spawn(DEFAULT_REDIS_SERVER, [conf, '--sentinel'], { stdio: ['ignore', 'ignore', 'ignore'] });
    live.add(child);
    child.once('exit', () => live.delete(child));
    await waitFor('sentinel answering PING', async () => (await rawCommand(port, ['PING'], 500)) === 'PONG', 10_000);
    await waitFor(
      'sentinel seeing the replica',
      async () => {
        const replicas = await rawCommand(port, ['SENTINEL', 'REPLICAS', name], 500);
        return Array.isArray(replicas) && replicas.length > 0;
      },
      10_000,
    );
    const sentinel: RedisServer = {
      port,
      url: `redis://${HOST}:${port}`,
      pid: child.pid ?? -1,
      process: child,
      kill: (signal: NodeJS.Signals = 'SIGKILL') => void child.kill(signal),
      async stop() {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGKILL');
          await exited(child);
        }
      },
      restart: () => Promise.reject(new Error('restarting a sentinel is not supported')),
      pause: () => void child.kill('SIGSTOP'),
      resume: () => void child.kill('SIGCONT'),
      command: (...args: string[]) => rawCommand(port, args),
    };
    servers.push(sentinel);
    return { master, replica, sentinel, name, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
