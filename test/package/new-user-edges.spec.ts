/**
 * Adversarial review: a new user adopting the packed package on NestJS 11, as the README
 * says. Unlike package.spec.ts (which installs every package at a pinned version in one
 * command, @nestjs/config 4 and @types/ws included, with --no-package-lock), these projects
 * are set up the way a NestJS 11 app is: its NestJS packages first, then
 * `npm install nestjs-ws-rate-limit` on its own, so npm resolves the package's peer
 * dependencies itself (and brings @nestjs/config and whatever else is missing).
 *
 * - A NestJS 11 ws app (common, core, platform-express, websockets, platform-ws, no
 *   @nestjs/config, no @types/ws): the install, `npm ls`, the quick start in the
 *   `nest new` layout and tsconfig of NestJS 11, frames seen by a plain `ws` client,
 *   `RateLimitedClient` from `/client` in CommonJS and ESM, invalid variables (environment
 *   and .env) stopping start-up with their name, and forRootAsync with ConfigService.
 * - A NestJS 11 socket.io app (websockets and platform-socket.io 11, no platform-ws): the
 *   README's socket.io install command.
 *
 * Failed before: the README's socket.io install command on NestJS 11 (ERESOLVE: npm chose
 * @nestjs/platform-ws 12 for the peer; the README now names NestJS 11's command), and the
 * quick start under `strict` and `skipLibCheck: false` without @types/ws (TS7016 in the
 * adapter's declarations, which now reach ws's types through adapters/ws-types).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ensureBuilt, ROOT } from '../support/build.js';
import { TestClient } from '../support/ws-client.js';
import { QUICK_START } from './apps.js';
import { cleanEnv, NEST_VERSIONS, SOCKET_IO_VERSIONS } from './consumers.js';

const run = promisify(execFile);
const DEV = (
  JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> }
).devDependencies;
const N11 = NEST_VERSIONS[11];

/** What one npm command answered: its exit code and everything it printed. */
interface NpmResult {
  code: number;
  output: string;
}

/** Runs npm in a project, as a user would (a package-lock, peers resolved by npm), never throwing. */
async function npm(dir: string, args: string[]): Promise<NpmResult> {
  const flags = ['--prefer-offline', '--no-audit', '--no-fund', '--loglevel=warn'];
  try {
    const { stdout, stderr } = await run('npm', [...args, ...flags], {
      cwd: dir,
      env: cleanEnv(),
      timeout: 300_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    return { code: 0, output: stdout + stderr };
  } catch (error) {
    const failed = error as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof failed.code === 'number' ? failed.code : -1, output: `${failed.stdout}${failed.stderr}` };
  }
}

/** The lines of npm's output about peer dependencies it could not satisfy (ERESOLVE and its report). */
function peerTrouble(output: string): string[] {
  return output
    .split('\n')
    .filter((line) =>
      /ERESOLVE|Could not resolve|Conflicting peer|peer .* from @nestjs|invalid:|UNMET PEER/i.test(line),
    )
    .map((line) => line.trim());
}

/** A new project: a package.json, then its first packages in one install. */
async function newProject(dir: string, packages: string[]): Promise<void> {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'newuser-app', version: '0.0.1', private: true }));
  const first = await npm(dir, ['install', ...packages]);
  if (first.code !== 0) throw new Error(`setting up ${dir} failed:\n${first.output}`);
}

/** The tsconfig.json `nest new` writes on NestJS 11 (a CommonJS app compiled with nodenext). */
const NEST11_TSCONFIG = {
  compilerOptions: {
    module: 'nodenext',
    moduleResolution: 'nodenext',
    resolvePackageJsonExports: true,
    esModuleInterop: true,
    isolatedModules: true,
    declaration: true,
    removeComments: true,
    emitDecoratorMetadata: true,
    experimentalDecorators: true,
    allowSyntheticDefaultImports: true,
    target: 'ES2023',
    sourceMap: true,
    outDir: './dist',
    baseUrl: './',
    incremental: true,
    skipLibCheck: true,
    strictNullChecks: true,
    forceConsistentCasingInFileNames: true,
    noImplicitAny: false,
    strictBindCallApply: false,
    noFallthroughCasesInSwitch: false,
  },
};

/** src/app.module.ts: the README's quick start, with the imports its prose names. */
const APP_MODULE = `import { Module } from '@nestjs/common';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Throttle, WsRateLimit, WsRateLimitModule } from 'nestjs-ws-rate-limit';

${QUICK_START}`;

/** src/main.ts: the README's main.ts; it listens on loopback, on PORT (0: any), and prints the port. */
const MAIN = `import { NestFactory } from '@nestjs/core';
import { WsRateLimitAdapter } from 'nestjs-ws-rate-limit';
import type { AddressInfo } from 'node:net';
import { AppModule } from './app.module';

async function bootstrap() {
  const app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] });
  app.useWebSocketAdapter(new WsRateLimitAdapter(app));
  await app.listen(Number(process.env.PORT ?? 3000), '127.0.0.1');
  app.enableShutdownHooks();
  console.log('LISTENING ' + (app.getHttpServer().address() as AddressInfo).port);
}
bootstrap();
`;

/**
 * src/config-app.ts: the module configured through @nestjs/config: `.env` loaded by
 * ConfigModule.forRoot before or after WsRateLimitModule.forRoot, or forRootAsync with
 * ConfigService. Prints the resolved default type figures, or FAILED and the error.
 */
const CONFIG_APP = `import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { WsRateLimit, WsRateLimitAdapter, WsRateLimitModule, WsRateLimitService } from 'nestjs-ws-rate-limit';

@WebSocketGateway()
@WsRateLimit()
export class EchoGateway {
  @SubscribeMessage('echo')
  echo(@MessageBody() data: unknown) {
    return { event: 'echo', data };
  }
}

const [variant, envFilePath] = process.argv.slice(2);
const config = () => ConfigModule.forRoot({ envFilePath });
const imports =
  variant === 'after'
    ? [WsRateLimitModule.forRoot(), config()]
    : variant === 'before'
      ? [config(), WsRateLimitModule.forRoot()]
      : [
          config(),
          WsRateLimitModule.forRootAsync({
            imports: [ConfigModule],
            inject: [ConfigService],
            useFactory: (settings: ConfigService) => ({
              type: { capacity: Number(settings.get('ECHO_CAPACITY')), refillRate: 1 },
            }),
          }),
        ];

@Module({ imports, providers: [EchoGateway] })
class AppModule {}

async function main() {
  const app = await NestFactory.create(AppModule, { logger: false, abortOnError: false });
  app.useWebSocketAdapter(new WsRateLimitAdapter(app));
  await app.init();
  console.log(JSON.stringify(app.get(WsRateLimitService).options.type));
  await app.close();
}
main().catch((error) => {
  console.log('FAILED ' + String(error?.message ?? error));
  process.exitCode = 1;
});
`;

/** A RateLimitedClient script: 60 chats (twice the burst), all delivered in order; prints what it saw. */
function clientScript(kind: 'cjs' | 'esm'): string {
  const imports =
    kind === 'cjs'
      ? `const { RateLimitedClient } = require('nestjs-ws-rate-limit/client');\nconst { WebSocket } = require('ws');`
      : `import { RateLimitedClient } from 'nestjs-ws-rate-limit/client';\nimport { WebSocket } from 'ws';`;
  return `${imports}
const client = new RateLimitedClient('ws://127.0.0.1:' + process.argv[2], {
  WebSocket,
  isAck: (message) => message.event === 'ack' && { event: 'chat' },
  undelivered: 'requeue',
});
const acked = [];
let refusals = 0;
const timer = setTimeout(() => finish('timed out'), 30000);
function finish(outcome) {
  clearTimeout(timer);
  console.log(JSON.stringify({ outcome, acked: acked.length, inOrder: acked.every((n, i) => n === i), refusals }));
  client.close();
}
client.on('rateLimit', () => refusals++);
client.on('message', (message) => {
  if (message.event !== 'ack') return;
  acked.push(message.data.n);
  if (acked.length === 60) finish('done');
});
for (let n = 0; n < 60; n++) client.send('chat', { n });
`;
}

/** A spawned app: its process and what it printed. */
interface Spawned {
  child: ChildProcess;
  output: () => string;
  exited: Promise<unknown>;
}

function spawnNode(dir: string, args: string[], env: Record<string, string> = {}): Spawned {
  const child = spawn(process.execPath, args, {
    cwd: dir,
    env: { ...cleanEnv(), NO_COLOR: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return { child, output: () => output, exited: once(child, 'exit') };
}

/** Ends a spawned process (SIGTERM, SIGKILL after 10 s) and waits for its exit. */
async function stop(spawned: Spawned): Promise<void> {
  const { child } = spawned;
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.exitCode === null && child.kill('SIGKILL'), 10_000);
    await spawned.exited;
    clearTimeout(timer);
  }
}

/** Runs a node script to its end (at most `timeoutMs`): exit code and output. */
async function runNode(
  dir: string,
  args: string[],
  env: Record<string, string> = {},
  timeoutMs = 60_000,
): Promise<{ code: number | null; output: string }> {
  const spawned = spawnNode(dir, args, env);
  const timer = setTimeout(() => spawned.child.kill('SIGKILL'), timeoutMs);
  await spawned.exited;
  clearTimeout(timer);
  return { code: spawned.child.exitCode, output: spawned.output() };
}

describe('a new user adopting the packed package on NestJS 11', () => {
  let scratch: string;
  let tarball: string;

  beforeAll(async () => {
    ensureBuilt('package');
    scratch = mkdtempSync(join(tmpdir(), 'newuser-edges-'));
    const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', scratch], { cwd: ROOT });
    tarball = join(scratch, (JSON.parse(stdout) as Array<{ filename: string }>)[0]!.filename);
  }, 300_000);

  afterAll(() => {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  // A NestJS 11 socket.io app has @nestjs/websockets and @nestjs/platform-socket.io 11, and no
  // @nestjs/platform-ws. The package's peer @nestjs/platform-ws is not optional, so npm adds
  // it, choosing the newest version the range allows (12.x), whose peer @nestjs/common ^12
  // conflicts with the app's NestJS 11: ERESOLVE, and nothing installed. The README's
  // socket.io section had only the unpinned command; it now gives NestJS 11's, run here.
  it("the README's NestJS 11 socket.io install command works in a NestJS 11 socket.io app (no peer resolved to NestJS 12)", async () => {
    const dir = join(scratch, 'nest11-socket.io');
    await newProject(dir, [
      `@nestjs/common@${N11['@nestjs/common']}`,
      `@nestjs/core@${N11['@nestjs/core']}`,
      `@nestjs/platform-express@${N11['@nestjs/platform-express']}`,
      `@nestjs/websockets@${N11['@nestjs/websockets']}`,
      `@nestjs/platform-socket.io@${SOCKET_IO_VERSIONS[11]['@nestjs/platform-socket.io']}`,
      `socket.io@${DEV['socket.io']}`,
      `reflect-metadata@${DEV['reflect-metadata']}`,
      `rxjs@${DEV['rxjs']}`,
    ]);
    const command =
      'npm install nestjs-ws-rate-limit @nestjs/platform-socket.io@11 @nestjs/platform-ws@11 @nestjs/config@4 socket.io';
    expect(readFileSync(join(ROOT, 'README.md'), 'utf8')).toContain(command);
    const args = command.split(' ').slice(1);
    const result = await npm(
      dir,
      args.map((arg) => (arg === 'nestjs-ws-rate-limit' ? tarball : arg)),
    );
    expect({ code: result.code, conflicts: peerTrouble(result.output) }).toEqual({ code: 0, conflicts: [] });
    const listed = await npm(dir, ['ls']);
    expect({ code: listed.code, problems: peerTrouble(listed.output) }).toEqual({ code: 0, problems: [] });
  }, 600_000);

  describe('a NestJS 11 ws app: `npm install nestjs-ws-rate-limit`, then the quick start', () => {
    let dir: string;
    let install: NpmResult;

    beforeAll(async () => {
      dir = join(scratch, 'nest11-ws');
      // What a NestJS 11 app with a ws gateway has (nest new, then NestJS's WebSocket docs):
      // no @nestjs/config, no ws of its own (platform-ws brings it), no @types/ws.
      await newProject(dir, [
        ...(
          [
            '@nestjs/common',
            '@nestjs/core',
            '@nestjs/platform-express',
            '@nestjs/websockets',
            '@nestjs/platform-ws',
          ] as const
        ).map((name) => `${name}@${N11[name]}`),
        `reflect-metadata@${DEV['reflect-metadata']}`,
        `rxjs@${DEV['rxjs']}`,
        `typescript@${N11.typescript}`,
        `@types/node@${DEV['@types/node']}`,
      ]);
      install = await npm(dir, ['install', tarball]);
      mkdirSync(join(dir, 'src'), { recursive: true });
      writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify(NEST11_TSCONFIG, null, 2));
      writeFileSync(join(dir, 'src/app.module.ts'), APP_MODULE);
      writeFileSync(join(dir, 'src/main.ts'), MAIN);
      writeFileSync(join(dir, 'src/config-app.ts'), CONFIG_APP);
      writeFileSync(join(dir, 'client.cjs'), clientScript('cjs'));
      writeFileSync(join(dir, 'client.mjs'), clientScript('esm'));
    }, 600_000);

    it('installs without a peer conflict, `npm ls` is clean, and npm brings an @nestjs/config that accepts NestJS 11', async () => {
      expect({ code: install.code, conflicts: peerTrouble(install.output) }).toEqual({ code: 0, conflicts: [] });
      const listed = await npm(dir, ['ls', '--all']);
      expect({ code: listed.code, problems: peerTrouble(listed.output) }).toEqual({ code: 0, problems: [] });
      const config = JSON.parse(readFileSync(join(dir, 'node_modules/@nestjs/config/package.json'), 'utf8')) as {
        peerDependencies: Record<string, string>;
      };
      expect(config.peerDependencies['@nestjs/common']).toMatch(/\^11\./);
      // The ws the package's adapter loads has the fragment limits it requires (>= 8.21).
      const ws = JSON.parse(readFileSync(join(dir, 'node_modules/ws/package.json'), 'utf8')) as { version: string };
      const [major, minor] = ws.version.split('.').map(Number) as [number, number];
      expect(major === 8 && minor >= 21).toBe(true);
    });

    it("the quick start compiles with NestJS 11's `nest new` tsconfig", async () => {
      let output = '';
      try {
        await run(process.execPath, [join(dir, 'node_modules/typescript/bin/tsc'), '-p', dir, '--pretty', 'false'], {
          cwd: dir,
          env: cleanEnv(),
        });
      } catch (error) {
        output = String((error as { stdout?: string }).stdout ?? error);
      }
      expect(output).toBe('');
      expect(existsSync(join(dir, 'dist/main.js'))).toBe(true);
      expect(existsSync(join(dir, 'dist/config-app.js'))).toBe(true);
    }, 120_000);

    // The adapter's declarations imported `ws` (WebSocketServer, WebSocket), which ships no
    // types: an app with `strict` and `skipLibCheck: false` and no @types/ws (NestJS's own
    // declarations never need it) got TS7016 inside the package; they now go through
    // adapters/ws-types (aliases under @ts-ignore). package.spec.ts installs @types/ws in
    // every project, so it never saw this.
    it('the quick start type-checks with strict and skipLibCheck false without @types/ws', async () => {
      expect(existsSync(join(dir, 'node_modules/@types/ws'))).toBe(false);
      let output = '';
      try {
        await run(
          process.execPath,
          [
            join(dir, 'node_modules/typescript/bin/tsc'),
            ...['--noEmit', '--pretty', 'false', '--strict', '--skipLibCheck', 'false'],
            ...['--experimentalDecorators', '--emitDecoratorMetadata', '--target', 'ES2023'],
            ...['--module', 'nodenext', '--moduleResolution', 'nodenext', '--types', 'node'],
            join(dir, 'src/app.module.ts'),
            join(dir, 'src/main.ts'),
          ],
          { cwd: dir, env: cleanEnv() },
        );
      } catch (error) {
        output = String((error as { stdout?: string }).stdout ?? error);
      }
      const errors = output.split('\n').filter((line) => line.includes('error TS'));
      expect(errors).toEqual([]);
    }, 120_000);

    // package.spec.ts compiles /store only in its store-only project (node10, nodenext): here
    // the root, /client and /store together, in the NestJS 11 project, under each resolution.
    it.each([
      ['commonjs', 'node10', 'commonjs'],
      ['node16', 'node16', 'commonjs'],
      ['nodenext', 'nodenext', 'module'],
      ['esnext', 'bundler', 'module'],
      ['preserve', 'bundler', 'module'],
    ])(
      'module %s, moduleResolution %s (package type %s): the root, /client and /store resolve with skipLibCheck false',
      async (module, resolution, type) => {
        const folder = join(dir, `subpaths-${module}-${resolution}`);
        mkdirSync(folder, { recursive: true });
        writeFileSync(join(folder, 'package.json'), JSON.stringify({ type }));
        writeFileSync(
          join(folder, 'main.ts'),
          `import { WsRateLimitAdapter, WsRateLimitModule, WsRateLimitService } from 'nestjs-ws-rate-limit';
import { RateLimitedClient, parseRateLimitFrame, type RateLimitedClientOptions } from 'nestjs-ws-rate-limit/client';
import { MemoryRateLimitStore, RedisRateLimitStore, createPlan, tokenBucketSpec } from 'nestjs-ws-rate-limit/store';
const options: RateLimitedClientOptions = { maxQueue: 10 };
export const all = [WsRateLimitAdapter, WsRateLimitModule, WsRateLimitService, RateLimitedClient, parseRateLimitFrame,
  MemoryRateLimitStore, RedisRateLimitStore, createPlan, tokenBucketSpec, options];
`,
        );
        let output = '';
        try {
          await run(
            process.execPath,
            [
              join(dir, 'node_modules/typescript/bin/tsc'),
              ...['--noEmit', '--pretty', 'false', '--skipLibCheck', 'false', '--experimentalDecorators'],
              ...['--target', 'ES2022', '--types', 'node', '--module', module, '--moduleResolution', resolution],
              join(folder, 'main.ts'),
            ],
            { cwd: folder, env: cleanEnv() },
          );
        } catch (error) {
          output = String((error as { stdout?: string }).stdout ?? error);
        }
        expect(output.split('\n').filter((line) => line.includes('error TS'))).toEqual([]);
      },
      120_000,
    );

    describe('the quick start running (node dist/main.js)', () => {
      let app: Spawned;
      let port: number;

      beforeAll(async () => {
        app = spawnNode(dir, ['dist/main.js'], { PORT: '0' });
        const deadline = Date.now() + 60_000;
        while (!/LISTENING \d+/.test(app.output()) && app.child.exitCode === null && Date.now() < deadline) {
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        const match = /LISTENING (\d+)/.exec(app.output());
        if (!match) {
          await stop(app);
          throw new Error(`the quick start did not start:\n${app.output()}`);
        }
        port = Number(match[1]);
      }, 90_000);

      afterAll(async () => {
        if (app) await stop(app);
      });

      it('a plain ws client sending 39 chats at once gets 30 acks, then TYPE_LIMIT frames with a retryAfter', async () => {
        const client = await TestClient.connect(`ws://127.0.0.1:${port}`);
        try {
          client.inOneWrite(() => {
            // 39: 9 past the burst of 30 (10 would close), so that 600 ms of refill (15 a
            // second) in a fresh process on a loaded machine still leaves some refused.
            for (let i = 0; i < 39; i++) client.send('chat', i);
          });
          await client.waitFor(() => true, 39, 20_000);
          const acks = client.events('ack').length;
          const [frame] = client.events('rate_limit');
          expect(acks).toBeGreaterThanOrEqual(30);
          expect(acks).toBeLessThan(39);
          expect(frame?.data).toEqual(
            expect.objectContaining({
              code: 'TYPE_LIMIT',
              messageType: 'chat',
              limit: 30,
              remaining: 0,
              warningCount: 1,
            }),
          );
          expect(frame?.data.retryAfter).toBeGreaterThan(0);
        } finally {
          client.socket.terminate();
        }
      }, 60_000);

      it.each([['cjs'], ['mjs']])(
        'RateLimitedClient from nestjs-ws-rate-limit/client (client.%s) delivers 60 chats, twice the burst, in order',
        async (ext) => {
          const result = await runNode(dir, [`client.${ext}`, String(port)], {}, 60_000);
          const last = result.output.trim().split('\n').pop() ?? '';
          expect({ code: result.code, last }).toEqual({
            code: 0,
            last: expect.stringMatching(/^\{"outcome":"done","acked":60,"inOrder":true,"refusals":\d+\}$/),
          });
        },
        90_000,
      );
    });

    it.each([
      ['WS_RATE_LIMIT_GLOBAL_CAPACITY', 'abc'],
      ['WS_RATE_LIMIT_TRUST_PROXY', '999.1.1.1'],
      ['WS_RATE_LIMIT_STORE', 'redis'],
    ])(
      'start-up with %s=%s stops with an error naming the variable, and the process exits',
      async (name, value) => {
        const result = await runNode(dir, ['dist/main.js'], { PORT: '0', [name]: value }, 60_000);
        expect(result.code).not.toBe(0);
        expect(result.code).not.toBeNull();
        expect(result.output).toContain(`WsRateLimitConfigError: nestjs-ws-rate-limit: ${name}`);
        expect(result.output).not.toContain('LISTENING');
      },
      90_000,
    );

    describe('@nestjs/config as npm brought it, with a .env file', () => {
      beforeAll(() => {
        writeFileSync(join(dir, 'good.env'), 'WS_RATE_LIMIT_TYPE_CAPACITY=3\nECHO_CAPACITY=4\n');
        writeFileSync(join(dir, 'bad.env'), 'WS_RATE_LIMIT_TYPE_CAPACITY=abc\n');
      });

      it.each([['before'], ['after']])(
        'ConfigModule.forRoot() %s WsRateLimitModule.forRoot(): a .env variable is read; an invalid one stops start-up naming it',
        async (variant) => {
          const good = await runNode(dir, ['dist/config-app.js', variant, 'good.env']);
          expect({ code: good.code, out: good.output.trim() }).toEqual({
            code: 0,
            out: '{"capacity":3,"refillRate":10}',
          });
          const bad = await runNode(dir, ['dist/config-app.js', variant, 'bad.env']);
          expect(bad.code).toBe(1);
          expect(bad.output).toContain('FAILED nestjs-ws-rate-limit: WS_RATE_LIMIT_TYPE_CAPACITY must be a number');
        },
        90_000,
      );

      it('forRootAsync({ imports: [ConfigModule], inject: [ConfigService], useFactory }) takes the factory figures from .env', async () => {
        const good = await runNode(dir, ['dist/config-app.js', 'async', 'good.env']);
        expect({ code: good.code, out: good.output.trim() }).toEqual({ code: 0, out: '{"capacity":4,"refillRate":1}' });
        // The factory's NaN (ECHO_CAPACITY unset) is named as the option it was given for.
        const bad = await runNode(dir, ['dist/config-app.js', 'async', 'bad.env']);
        expect(bad.code).toBe(1);
        expect(bad.output).toContain('FAILED nestjs-ws-rate-limit: option type.capacity must be a number');
      }, 90_000);
    });
  });
});
