import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ensureBuilt, ROOT } from '../support/build.js';

const run = promisify(execFile);

/**
 * The package as users receive it: packed with `npm pack`, unpacked into a scratch app's
 * node_modules, and used by a NestJS 12 app written once as an ES module and once as
 * CommonJS, each type-checked against the shipped declarations and run.
 */
describe('the packed package', () => {
  let scratch: string;

  beforeAll(async () => {
    ensureBuilt('package');
    scratch = mkdtempSync(join(tmpdir(), 'wsrl-pack-'));
    const { stdout } = await run('npm', ['pack', '--silent', '--pack-destination', scratch], { cwd: ROOT });
    const tarball = join(scratch, stdout.trim().split('\n').pop()!);
    const modules = join(scratch, 'node_modules');
    const target = join(modules, 'nestjs-ws-rate-limit');
    mkdirSync(target, { recursive: true });
    await run('tar', ['-xzf', tarball, '-C', target, '--strip-components=1']);
    // Everything else the apps need comes from the repository's own installation.
    for (const entry of readdirSync(join(ROOT, 'node_modules'))) {
      if (entry === '.bin' || entry === 'nestjs-ws-rate-limit') continue;
      symlinkSync(join(ROOT, 'node_modules', entry), join(modules, entry));
    }
  }, 120_000);

  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it('ships only the builds, the README and the manifest', async () => {
    const { stdout } = await run('npm', ['pack', '--dry-run', '--json'], { cwd: ROOT });
    const files = (JSON.parse(stdout) as Array<{ files: Array<{ path: string }> }>)[0]!.files.map((file) => file.path);
    expect(files.every((file) => /^(dist\/(esm|cjs)\/|README\.md$|package\.json$)/.test(file))).toBe(true);
    expect(files).toContain('dist/esm/index.d.ts');
    expect(files).toContain('dist/cjs/index.d.ts');
    expect(files).toContain('dist/cjs/package.json');
  });

  it.each([
    ['an ES-module app', 'esm', 'module', 'nodenext'],
    // TypeScript's nodenext lets CommonJS code require ES modules (Node >= 20.19), as NestJS 12 needs.
    ['a CommonJS app', 'cjs', 'commonjs', 'nodenext'],
  ])(
    'works in %s',
    async (_name, dir, type, module) => {
      const app = join(scratch, dir);
      mkdirSync(app, { recursive: true });
      writeFileSync(join(app, 'package.json'), JSON.stringify({ name: `app-${dir}`, private: true, type }));
      writeFileSync(
        join(app, 'tsconfig.json'),
        JSON.stringify({
          compilerOptions: {
            target: 'ES2022',
            module,
            moduleResolution: module,
            strict: true,
            experimentalDecorators: true,
            emitDecoratorMetadata: true,
            skipLibCheck: false,
            types: ['node'],
            typeRoots: [join(scratch, 'node_modules/@types')],
            outDir: 'out',
          },
          files: ['main.ts'],
        }),
      );
      writeFileSync(join(app, 'main.ts'), APP_SOURCE);
      await run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', app], { cwd: app });
      const { stdout } = await run(process.execPath, [join(app, 'out/main.js')], {
        cwd: app,
        env: { ...process.env, NODE_OPTIONS: '' },
        timeout: 60_000,
      });
      expect(JSON.parse(stdout.trim().split('\n').pop()!)).toEqual({
        acks: 2,
        limited: { code: 'TYPE_LIMIT', messageType: 'chat', limit: 2, remaining: 0, warningCount: 1 },
      });
    },
    120_000,
  );
});

/** A whole app: module, gateway, adapter; it connects to itself and prints what it saw. */
const APP_SOURCE = `
import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Throttle, WsRateLimit, WsRateLimitAdapter, WsRateLimitModule } from 'nestjs-ws-rate-limit';
import WebSocket from 'ws';
import type { AddressInfo } from 'node:net';

@WebSocketGateway()
@WsRateLimit()
class Gateway {
  @Throttle({ capacity: 2, refillRate: 0.01 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

@Module({ imports: [WsRateLimitModule.forRoot({ useEnv: false })], providers: [Gateway] })
class AppModule {}

async function main(): Promise<void> {
  const app = await NestFactory.create(AppModule, { logger: false });
  app.useWebSocketAdapter(new WsRateLimitAdapter(app));
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  const socket = new WebSocket('ws://127.0.0.1:' + port);
  const frames: Array<{ event: string; data: Record<string, unknown> }> = [];
  await new Promise((resolve) => socket.once('open', resolve));
  const done = new Promise<void>((resolve) =>
    socket.on('message', (text) => {
      frames.push(JSON.parse(text.toString()));
      if (frames.length === 3) resolve();
    }),
  );
  for (let i = 0; i < 3; i++) socket.send(JSON.stringify({ event: 'chat', data: i }));
  await done;
  const { retryAfter, ...limited } = frames.find((frame) => frame.event === 'rate_limit')!.data;
  console.log(JSON.stringify({ acks: frames.filter((frame) => frame.event === 'ack').length, limited }));
  socket.close();
  await app.close();
}
void main();
`;
