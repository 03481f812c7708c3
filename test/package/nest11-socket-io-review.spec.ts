/**
 * Adversarial review: a new user on NestJS 11 with socket.io, installing the packed package.
 *
 * The project is set up as a NestJS 11 socket.io app is (common, core, platform-express,
 * websockets and platform-socket.io 11, socket.io, socket.io-client; no @nestjs/config, no
 * platform-ws, no prom-client), then the README's NestJS 11 socket.io install command is run
 * with the packed tarball in place of the package name, so npm resolves the peers itself.
 * The package is built and packed from a copy of the repository in a scratch folder (nothing
 * is written into the repository).
 *
 * What the other package tests do not cover, checked here:
 * - a CommonJS app compiled with `module: commonjs` / `moduleResolution: node10` (the
 *   `nest new` setting before NestJS 11), resolving `/socket.io` and `/client` through
 *   `typesVersions`, with `socketIoFactory(io)` type-checked against socket.io-client;
 * - that app running: the sixth rapid handshake over the WebSocket transport answered 429
 *   with `Retry-After`, a refused event answered through its ack, the tenth violation's
 *   `rate_limit_disconnect` and `io server disconnect`, and `RateLimitedClient` required
 *   from CommonJS with `socketIoFactory` delivering twice the burst in order;
 * - the app's own Jest suite (NestJS 11's `nest new` tests in CommonJS) loading the package.
 *
 * Two cases failed on the code reviewed (d3b6e7d), each fixed since:
 * - npm resolved the peer @nestjs/config to 12.x, ES modules only, which the CommonJS build
 *   requires: Jest's CommonJS runtime (and Node 22.0-22.11) could not load the package. The
 *   README's NestJS 11 commands now name `@nestjs/config@4`;
 * - with the app's socket.io newer than the one @nestjs/platform-socket.io pins (a nested
 *   copy), WsRateLimitIoAdapter's declarations failed to type-check against IoAdapter's
 *   (TS2416, skipLibCheck false): the overrides now take socket.io's types from IoAdapter.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { io, type Socket } from 'socket.io-client';
import { ROOT } from '../support/build.js';
import { cleanEnv, NEST_VERSIONS, SOCKET_IO_VERSIONS } from './consumers.js';

const run = promisify(execFile);
const DEV = (
  JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> }
).devDependencies;
const N11 = NEST_VERSIONS[11];

/** The README's NestJS 11 socket.io install command (checked to be in the README). */
const IO_INSTALL_11 =
  'npm install nestjs-ws-rate-limit @nestjs/platform-socket.io@11 @nestjs/platform-ws@11 @nestjs/config@4 socket.io';

/** Runs npm in a project as a user would (a package-lock, peers resolved by npm); throws with its output. */
async function npm(dir: string, args: string[]): Promise<string> {
  const flags = ['--prefer-offline', '--no-audit', '--no-fund', '--loglevel=warn'];
  try {
    const { stdout, stderr } = await run('npm', [...args, ...flags], {
      cwd: dir,
      env: cleanEnv(),
      timeout: 300_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout + stderr;
  } catch (error) {
    const failed = error as { stdout?: string; stderr?: string };
    throw new Error(`npm ${args.join(' ')} failed in ${dir}:\n${failed.stdout}${failed.stderr}`, { cause: error });
  }
}

/** Runs a command to its end, never throwing: exit code and everything it printed. */
async function runAll(
  file: string,
  args: string[],
  cwd: string,
  timeout = 120_000,
): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run(file, args, { cwd, env: cleanEnv(), timeout, maxBuffer: 16 * 1024 * 1024 });
    return { code: 0, output: stdout + stderr };
  } catch (error) {
    const failed = error as { code?: unknown; stdout?: string; stderr?: string };
    return { code: typeof failed.code === 'number' ? failed.code : -1, output: `${failed.stdout}${failed.stderr}` };
  }
}

/** src/app.module.ts: the README's quick start gateway, plus two handlers answering through acks. */
const APP_MODULE = `import { Module } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Throttle, WsRateLimit, WsRateLimitModule } from 'nestjs-ws-rate-limit';

@WebSocketGateway()
@WsRateLimit()
export class ChatGateway {
  @Throttle({ capacity: 30, refillRate: 15 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }

  @Throttle({ capacity: 30, refillRate: 15 })
  @SubscribeMessage('echo')
  echo(@MessageBody() data: { n: number }) {
    return { n: data.n };
  }

  @Throttle({ capacity: 2, refillRate: 0.01 })
  @SubscribeMessage('ask')
  ask(@MessageBody() data: unknown) {
    return { answered: data };
  }
}

@Module({ imports: [WsRateLimitModule.forRoot()], providers: [ChatGateway] })
export class AppModule {}
`;

/** src/main.ts: the README's socket.io main.ts; loopback, PORT (0: any), prints the port. */
const MAIN = `import { NestFactory } from '@nestjs/core';
import { WsRateLimitIoAdapter } from 'nestjs-ws-rate-limit/socket.io';
import type { AddressInfo } from 'node:net';
import { AppModule } from './app.module';

async function bootstrap() {
  const app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] });
  app.useWebSocketAdapter(new WsRateLimitIoAdapter(app));
  await app.listen(Number(process.env.PORT ?? 3000), '127.0.0.1');
  app.enableShutdownHooks();
  console.log('LISTENING ' + (app.getHttpServer().address() as AddressInfo).port);
}
bootstrap();
`;

/** src/client-types.ts: the README's socket.io client, type-checked only. */
const CLIENT_TYPES = `import { io } from 'socket.io-client';
import { RateLimitedClient, isSocketIoAck, socketIoFactory } from 'nestjs-ws-rate-limit/client';
import { RATE_LIMIT_DISCONNECT_EVENT, type RateLimitDisconnectInfo } from 'nestjs-ws-rate-limit/socket.io';

export function makeClient(): RateLimitedClient {
  const client = new RateLimitedClient('http://localhost:3000', {
    createSocket: socketIoFactory(io, { transports: ['websocket'] }),
    isAck: isSocketIoAck,
  });
  client.send('chat', { text: 'hello' });
  return client;
}
export const notice: RateLimitDisconnectInfo = { code: 1008, reason: RATE_LIMIT_DISCONNECT_EVENT };
`;

/** tsconfig.json of a CommonJS app on `moduleResolution: node10` (`nest new` before NestJS 11), strict. */
const TSCONFIG_NODE10 = {
  compilerOptions: {
    target: 'ES2022',
    module: 'commonjs',
    moduleResolution: 'node10',
    strict: true,
    experimentalDecorators: true,
    emitDecoratorMetadata: true,
    esModuleInterop: true,
    skipLibCheck: false,
    types: ['node'],
    outDir: 'dist',
    rootDir: 'src',
  },
  include: ['src'],
};

/**
 * client.cjs: the README's Node client on socket.io, required from CommonJS: 60 echoes (twice
 * the burst) sent at once; prints how many acks came back, in order, and the refusals seen.
 */
const CLIENT_CJS = `const { io } = require('socket.io-client');
const { RateLimitedClient, isSocketIoAck, socketIoFactory } = require('nestjs-ws-rate-limit/client');
const client = new RateLimitedClient('http://127.0.0.1:' + process.argv[2], {
  createSocket: socketIoFactory(io, { transports: ['websocket'] }),
  isAck: isSocketIoAck,
  undelivered: 'requeue',
});
const got = [];
const problems = [];
let refusals = 0;
const timer = setTimeout(() => finish('timed out'), 45000);
function finish(outcome) {
  clearTimeout(timer);
  console.log(JSON.stringify({ outcome, got: got.length, inOrder: got.every((n, i) => n === i), refusals, problems }));
  client.close();
}
client.on('rateLimit', () => refusals++);
client.on('drop', (event) => problems.push('drop ' + event.reason));
client.on('undelivered', (event) => problems.push('undelivered ' + event.reason));
client.on('message', (message) => {
  if (!message.ack || message.event !== 'echo') return;
  got.push(message.data.n);
  if (got.length === 60) finish('done');
});
for (let n = 0; n < 60; n++) client.send('echo', { n });
`;

/**
 * e2e/app.spec.js: the app's own Jest test (CommonJS, as NestJS 11's \`nest new\` sets Jest
 * up), on the compiled module: the app starts on the socket.io adapter and closes.
 */
const JEST_SPEC = `const { NestFactory } = require('@nestjs/core');
const { WsRateLimitService } = require('nestjs-ws-rate-limit');
const { WsRateLimitIoAdapter } = require('nestjs-ws-rate-limit/socket.io');
const { AppModule } = require('../dist/app.module');

test('the app starts with the limiter on socket.io', async () => {
  const app = await NestFactory.create(AppModule, { logger: false });
  app.useWebSocketAdapter(new WsRateLimitIoAdapter(app));
  await app.init();
  expect(app.get(WsRateLimitService).options.type.capacity).toBe(20);
  await app.close();
});
`;

/** A spawned app: its process and what it printed. */
interface Spawned {
  child: ChildProcess;
  output: () => string;
  exited: Promise<unknown>;
}

/** Starts `node dist/main.js` in the project and waits for its port. */
async function startApp(dir: string, env: Record<string, string>): Promise<{ app: Spawned; port: number }> {
  const child = spawn(process.execPath, ['dist/main.js'], {
    cwd: dir,
    env: { ...cleanEnv(), NO_COLOR: '1', PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const app: Spawned = { child, output: () => output, exited: once(child, 'exit') };
  const deadline = Date.now() + 60_000;
  while (!/LISTENING \d+/.test(output) && child.exitCode === null && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const match = /LISTENING (\d+)/.exec(output);
  if (!match) {
    await stop(app);
    throw new Error(`the app did not start:\n${output}`);
  }
  return { app, port: Number(match[1]) };
}

/** Ends a spawned process (SIGTERM, SIGKILL after 10 s) and waits for its exit. */
async function stop(spawned: Spawned | undefined): Promise<void> {
  if (!spawned) return;
  const { child } = spawned;
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.exitCode === null && child.kill('SIGKILL'), 10_000);
    await spawned.exited;
    clearTimeout(timer);
  }
}

/** A raw Engine.IO WebSocket handshake: the status line and headers the server answered. */
function rawUpgrade(port: number): Promise<{ status: number; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port,
      path: '/socket.io/?EIO=4&transport=websocket',
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
      },
    });
    req.once('upgrade', (response, socket) => {
      socket.destroy();
      resolve({ status: response.statusCode ?? 0, headers: response.headers });
    });
    req.once('response', (response) => {
      response.resume();
      resolve({ status: response.statusCode ?? 0, headers: response.headers });
    });
    req.once('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('no answer to the upgrade')));
    req.end();
  });
}

/** A socket.io-client socket on the WebSocket transport, connected (or the error that refused it). */
function connectIo(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = io(`http://127.0.0.1:${port}`, {
      transports: ['websocket'],
      reconnection: false,
      forceNew: true,
      timeout: 10_000,
    });
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (error) => {
      socket.disconnect();
      reject(error);
    });
  });
}

describe('a new user on NestJS 11 with socket.io, installing the packed package', () => {
  let scratch: string;
  let dir: string;
  let compiled: { code: number; output: string };

  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), 'nest11-io-review-'));
    // The package built and packed from a copy of the repository's sources.
    const source = join(scratch, 'src');
    mkdirSync(source);
    for (const name of ['lib', 'package.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'LICENSE']) {
      cpSync(join(ROOT, name), join(source, name), { recursive: true });
    }
    symlinkSync(join(ROOT, 'node_modules'), join(source, 'node_modules'), 'dir');
    await run('npm', ['run', 'build', '--silent'], { cwd: source, env: cleanEnv(), timeout: 300_000 });
    const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', scratch], {
      cwd: source,
      env: cleanEnv(),
    });
    const tarball = join(scratch, (JSON.parse(stdout) as Array<{ filename: string }>)[0]!.filename);

    // A NestJS 11 socket.io app, then the README's install command.
    dir = join(scratch, 'app');
    mkdirSync(join(dir, 'src'), { recursive: true });
    writeFileSync(
      join(dir, 'package.json'),
      JSON.stringify({ name: 'nest11-io-app', version: '0.0.1', private: true }),
    );
    await npm(dir, [
      'install',
      ...(['@nestjs/common', '@nestjs/core', '@nestjs/platform-express', '@nestjs/websockets'] as const).map(
        (name) => `${name}@${N11[name]}`,
      ),
      `@nestjs/platform-socket.io@${SOCKET_IO_VERSIONS[11]['@nestjs/platform-socket.io']}`,
      ...['socket.io', 'socket.io-client', 'reflect-metadata', 'rxjs', '@types/node'].map(
        (name) => `${name}@${DEV[name]}`,
      ),
      `typescript@${N11.typescript}`,
    ]);
    expect(readFileSync(join(ROOT, 'README.md'), 'utf8')).toContain(IO_INSTALL_11);
    const args = IO_INSTALL_11.split(' ').slice(1);
    await npm(
      dir,
      args.map((arg) => (arg === 'nestjs-ws-rate-limit' ? tarball : arg)),
    );
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify(TSCONFIG_NODE10, null, 2));
    writeFileSync(join(dir, 'src/app.module.ts'), `import 'reflect-metadata';\n${APP_MODULE}`);
    writeFileSync(join(dir, 'src/main.ts'), MAIN);
    writeFileSync(join(dir, 'src/client-types.ts'), CLIENT_TYPES);
    writeFileSync(join(dir, 'client.cjs'), CLIENT_CJS);
    // TypeScript emits even when it reports errors: the running checks use what it got.
    compiled = await runAll(
      process.execPath,
      [join(dir, 'node_modules/typescript/bin/tsc'), '-p', dir, '--pretty', 'false'],
      dir,
    );
  }, 600_000);

  afterAll(() => {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  /** tsc's diagnostics (first lines only), in the app's own files or in the package's declarations. */
  const errorsIn = (where: 'src/' | 'node_modules/nestjs-ws-rate-limit/'): string[] =>
    compiled.output.split('\n').filter((line) => line.startsWith(where) && line.includes('error TS'));

  it("module commonjs / moduleResolution node10: /socket.io and /client resolve through typesVersions, and the app's own files (socketIoFactory(io) included) type-check strictly", async () => {
    expect(errorsIn('src/')).toEqual([]);
    // node10 reads the subpaths' declarations from typesVersions (the CommonJS build's).
    const traced = await runAll(
      process.execPath,
      [join(dir, 'node_modules/typescript/bin/tsc'), '-p', dir, '--noEmit', '--traceResolution'],
      dir,
    );
    for (const [subpath, file] of [
      ['socket.io', 'dist/cjs/socket-io.d.ts'],
      ['client', 'dist/cjs/client/index.d.ts'],
    ]) {
      expect(traced.output).toContain(
        `Module name 'nestjs-ws-rate-limit/${subpath}' was successfully resolved to '${join(dir, 'node_modules/nestjs-ws-rate-limit', file)}'`,
      );
    }
  }, 180_000);

  // The README's command installs socket.io unpinned: npm takes the newest 4.x, while
  // @nestjs/platform-socket.io 11 depends on socket.io at an exact version (4.8.3) and keeps its
  // own copy when they differ. WsRateLimitIoAdapter's declarations override IoAdapter's methods
  // with parameters typed from the app's `socket.io` (Server, Socket, ServerOptions), and
  // IoAdapter's are typed from its own copy: two unrelated declarations of the same classes
  // (private members), so TS2416 on create, bindMessageHandlers and close under
  // `skipLibCheck: false`. package.spec.ts installs socket.io at exactly the driver's version,
  // so it never sees two copies.
  it("with the socket.io the README's NestJS 11 command installs beside the driver's own copy, the package's declarations type-check (skipLibCheck false)", () => {
    const version = (path: string): string =>
      (JSON.parse(readFileSync(join(dir, 'node_modules', path, 'package.json'), 'utf8')) as { version: string })
        .version;
    const driverOwn = '@nestjs/platform-socket.io/node_modules/socket.io';
    const copies = {
      app: version('socket.io'),
      driver: existsSync(join(dir, 'node_modules', driverOwn)) ? version(driverOwn) : version('socket.io'),
    };
    expect({ copies, errors: errorsIn('node_modules/nestjs-ws-rate-limit/') }).toEqual({ copies, errors: [] });
  });

  describe('the app running (node dist/main.js)', () => {
    let limits: Spawned | undefined;
    let limitsPort: number;
    let messages: Spawned | undefined;
    let messagesPort: number;
    const sockets: Socket[] = [];

    beforeAll(async () => {
      // One app whose connection budget (5 burst) refills once in 100 s, one whose budget
      // is wide, so that the message checks never meet the connection limit.
      ({ app: limits, port: limitsPort } = await startApp(dir, { WS_RATE_LIMIT_CONNECTION_REFILL_RATE: '0.01' }));
      ({ app: messages, port: messagesPort } = await startApp(dir, { WS_RATE_LIMIT_CONNECTION_CAPACITY: '100' }));
    }, 120_000);

    afterAll(async () => {
      for (const socket of sockets) socket.disconnect();
      await stop(limits);
      await stop(messages);
    });

    it('the sixth rapid handshake over the WebSocket transport is refused with HTTP 429 and Retry-After, before any upgrade', async () => {
      const answers: Array<{ status: number; retryAfter: unknown }> = [];
      for (let i = 0; i < 6; i++) {
        const { status, headers } = await rawUpgrade(limitsPort);
        answers.push({ status, retryAfter: headers['retry-after'] });
      }
      expect(answers.map((answer) => answer.status)).toEqual([101, 101, 101, 101, 101, 429]);
      expect(Number(answers[5]!.retryAfter)).toBeGreaterThan(0);
    }, 60_000);

    it('an event sent with an ack past its limit is answered through the ack, and no rate_limit event is emitted', async () => {
      const socket = await connectIo(messagesPort);
      sockets.push(socket);
      const events: string[] = [];
      socket.onAny((event: string) => events.push(event));
      const answers: unknown[] = [];
      for (let n = 0; n < 3; n++) answers.push(await socket.timeout(10_000).emitWithAck('ask', { n }));
      expect(answers.slice(0, 2)).toEqual([{ answered: { n: 0 } }, { answered: { n: 1 } }]);
      expect(answers[2]).toEqual({
        event: 'rate_limit',
        data: expect.objectContaining({
          code: 'TYPE_LIMIT',
          messageType: 'ask',
          limit: 2,
          remaining: 0,
          warningCount: 1,
        }),
      });
      expect((answers[2] as { data: { retryAfter: number } }).data.retryAfter).toBeGreaterThan(0);
      expect(events).toEqual([]);

      // Nine more refusals without acks: eight rate_limit events, then at the tenth violation
      // its rate_limit event, the rate_limit_disconnect notice and the server's disconnect.
      const disconnected = new Promise<string>((resolve) => socket.once('disconnect', (reason) => resolve(reason)));
      const seen: Array<[string, unknown]> = [];
      socket.onAny((event: string, data: unknown) => seen.push([event, data]));
      for (let n = 0; n < 12; n++) socket.emit('ask', { n });
      expect(await disconnected).toBe('io server disconnect');
      const limited = seen.filter(([event]) => event === 'rate_limit');
      expect(limited.map(([, data]) => (data as { warningCount: number }).warningCount)).toEqual([
        2, 3, 4, 5, 6, 7, 8, 9, 10,
      ]);
      expect(seen.at(-1)).toEqual(['rate_limit_disconnect', { code: 1008, reason: 'Rate limit violations' }]);
    }, 60_000);

    it('RateLimitedClient required from CommonJS with socketIoFactory delivers 60 echoes, twice the burst, in order', async () => {
      const result = await runAll(process.execPath, ['client.cjs', String(messagesPort)], dir, 90_000);
      const last = result.output.trim().split('\n').pop() ?? '';
      expect({ code: result.code, last }).toEqual({
        code: 0,
        last: expect.stringMatching(/^\{"outcome":"done","got":60,"inOrder":true,"refusals":\d+,"problems":\[\]\}$/),
      });
    }, 120_000);
  });

  // npm resolves the peer @nestjs/config (^4 || ^12) of a NestJS 11 app that has none (NestJS 11's
  // `nest new` has none, and the README's NestJS 11 commands do not name it) to 12.x: an
  // ES-module-only package, which the CommonJS build requires at the root entry point
  // (ws-rate-limit.module). Node >= 22.12 and >= 20.19 load it through require(esm); Jest's
  // CommonJS runtime (the test runner `nest new` sets up) does not (before Node 24.9), nor does
  // Node 22.0-22.11, which `engines` (>= 20.19.0) admits. Everything else in such an app is
  // CommonJS: the package's choice of peer alone makes it an ES-module app.
  it("a NestJS 11 CommonJS app's own Jest suite loads the package after the README's NestJS 11 install (no ES-module-only peer pulled in)", async () => {
    const e2e = join(dir, 'e2e');
    mkdirSync(e2e, { recursive: true });
    writeFileSync(join(e2e, 'app.spec.js'), JEST_SPEC);
    writeFileSync(
      join(e2e, 'jest.config.json'),
      JSON.stringify({ rootDir: '.', testEnvironment: 'node', testRegex: '\\.spec\\.js$', transform: {} }),
    );
    const jest = await runAll(
      process.execPath,
      [
        join(ROOT, 'node_modules/jest/bin/jest.js'),
        ...['--config', join(e2e, 'jest.config.json'), '--ci', '--cacheDirectory', join(scratch, 'jest-cache')],
      ],
      e2e,
    );
    const config = JSON.parse(readFileSync(join(dir, 'node_modules/@nestjs/config/package.json'), 'utf8')) as {
      version: string;
      type?: string;
    };
    // Node without require(esm), as Node 22.0-22.11 is by default (simulated where the flag exists).
    const flag = '--no-experimental-require-module';
    const plain = process.allowedNodeEnvironmentFlags.has(flag)
      ? await runAll(process.execPath, [flag, '-e', "require('nestjs-ws-rate-limit')"], dir)
      : { code: 0, output: '' };
    expect({
      withoutRequireEsm:
        plain.code === 0
          ? 'loaded'
          : plain.output
              .split('\n')
              .find((line) => /ERR_REQUIRE_ESM/.test(line))
              ?.trim(),
      jest:
        jest.code === 0
          ? 'passed'
          : jest.output
              .split('\n')
              .find((line) => /ES Module|ERR_REQUIRE_ESM/.test(line))
              ?.trim(),
      nestjsConfig: `${config.version} (${config.type === 'module' ? 'ES modules only' : 'CommonJS'})`,
    }).toEqual({ withoutRequireEsm: 'loaded', jest: 'passed', nestjsConfig: expect.stringContaining('(CommonJS)') });
  }, 180_000);
});
