import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ensureBuilt, ROOT } from '../support/build.js';
import {
  GATEWAY_APP,
  GATEWAY_EXPECTED,
  IO_GATEWAY_APP,
  IO_GATEWAY_EXPECTED,
  STORE_APP,
  STORE_EXPECTED,
} from './apps.js';
import {
  compileConsumer,
  installProject,
  nestPackages,
  pool,
  runConsumer,
  settingsFor,
  storePackages,
  type Compiled,
  type Setting,
} from './consumers.js';

const run = promisify(execFile);

/** Every consumer: a project (one npm install) and a setting compiled in a folder of it. */
const CASES: Array<{ project: 'nest11' | 'nest12' | 'store'; setting: Setting }> = [
  ...settingsFor(11).map((setting) => ({ project: 'nest11' as const, setting })),
  ...settingsFor(12).map((setting) => ({ project: 'nest12' as const, setting })),
  ...settingsFor(12)
    .filter((setting) => setting.name === 'cjs-node10' || setting.name === 'esm-nodenext')
    .map((setting) => ({ project: 'store' as const, setting })),
];
const label = (c: (typeof CASES)[number]): string => `${c.project}/${c.setting.name}`;
/** The socket.io app (`/socket.io`), compiled by each NestJS project under each of its settings. */
const IO_CASES = (['nest11', 'nest12'] as const).flatMap((project) =>
  settingsFor(project === 'nest11' ? 11 : 12).map((setting) => ({
    project,
    setting: { ...setting, name: `${setting.name}-socket.io` },
  })),
);

/**
 * The package as users receive it: packed once with `npm pack`, installed with npm into
 * throwaway consumer projects (NestJS 11, NestJS 12, and a store-only project without
 * @nestjs/config), none with ioredis. Each project compiles several TypeScript settings
 * against its one node_modules with `skipLibCheck: false`, and each compiled app runs.
 */
describe('the packed package in consumer projects', () => {
  let scratch: string;
  let files: string[];
  const compiled = new Map<string, Compiled>();

  beforeAll(async () => {
    ensureBuilt('package');
    scratch = mkdtempSync(join(tmpdir(), 'wsrl-pack-'));
    const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', scratch], { cwd: ROOT });
    const [packed] = JSON.parse(stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
    files = packed!.files.map((file) => file.path);
    const tarball = join(scratch, packed!.filename);
    // One install per project, one after the other (they share npm's cache).
    await installProject(join(scratch, 'nest11'), tarball, nestPackages(11));
    await installProject(join(scratch, 'nest12'), tarball, nestPackages(12));
    await installProject(join(scratch, 'store'), tarball, storePackages(), false);
    const all = [...CASES, ...IO_CASES];
    const source = (c: (typeof all)[number]): string =>
      c.project === 'store' ? STORE_APP : c.setting.name.endsWith('-socket.io') ? IO_GATEWAY_APP : GATEWAY_APP;
    const results = await pool(
      all.map((c) => () => compileConsumer(join(scratch, c.project), c.setting, source(c))),
      2,
    );
    all.forEach((c, index) => compiled.set(label(c), results[index]!));
  }, 900_000);

  afterAll(() => {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('ships the builds, README, LICENSE and manifest, and no source maps', () => {
    expect(files.filter((file) => !/^(dist\/(esm|cjs)\/|README\.md$|LICENSE$|package\.json$)/.test(file))).toEqual([]);
    expect(files).toContain('dist/esm/index.d.ts');
    expect(files).toContain('dist/cjs/index.d.ts');
    expect(files).toContain('dist/cjs/package.json');
    expect(files).toContain('dist/esm/store.d.ts');
    expect(files).toContain('dist/cjs/client/index.d.ts');
    expect(files).toContain('dist/esm/socket-io.d.ts');
    expect(files).toContain('dist/cjs/socket-io.d.ts');
    expect(files).toContain('LICENSE');
    expect(files.filter((file) => file.endsWith('.map'))).toEqual([]);
  });

  it('installs without ioredis, and the store-only project without @nestjs/config', () => {
    for (const project of ['nest11', 'nest12', 'store']) {
      expect(existsSync(join(scratch, project, 'node_modules/nestjs-ws-rate-limit/package.json'))).toBe(true);
      expect(existsSync(join(scratch, project, 'node_modules/ioredis'))).toBe(false);
    }
    expect(existsSync(join(scratch, 'nest11/node_modules/@nestjs/config'))).toBe(true);
    expect(existsSync(join(scratch, 'store/node_modules/@nestjs/config'))).toBe(false);
    expect(existsSync(join(scratch, 'store/node_modules/@nestjs/core'))).toBe(false);
    // Each NestJS project has the socket.io driver of its own NestJS; the store-only one has none.
    const version = (project: string, name: string): string =>
      (
        JSON.parse(readFileSync(join(scratch, project, 'node_modules', name, 'package.json'), 'utf8')) as {
          version: string;
        }
      ).version;
    expect(version('nest11', '@nestjs/platform-socket.io')).toMatch(/^11\./);
    expect(version('nest12', '@nestjs/platform-socket.io')).toMatch(/^12\./);
    expect(existsSync(join(scratch, 'store/node_modules/socket.io'))).toBe(false);
  });

  it.each(CASES.filter((c) => c.project !== 'store').map((c) => [label(c)]))(
    '%s compiles (root and /client) and runs: rate_limit frame past the limit, 429 on the sixth connection',
    async (name) => {
      const result = compiled.get(name)!;
      expect(result.other).toEqual([]);
      expect(await runConsumer(result.dir)).toEqual(GATEWAY_EXPECTED);
    },
    120_000,
  );

  it.each(IO_CASES.map((c) => [label(c)]))(
    '%s compiles (/socket.io) and runs on socket.io: rate_limit event past the limit, 429 on the sixth handshake',
    async (name) => {
      const result = compiled.get(name)!;
      expect(result.other).toEqual([]);
      expect(await runConsumer(result.dir)).toEqual(IO_GATEWAY_EXPECTED);
    },
    120_000,
  );

  it.each(CASES.filter((c) => c.project === 'store').map((c) => [label(c)]))(
    '%s compiles and runs nestjs-ws-rate-limit/store without @nestjs/config',
    async (name) => {
      const result = compiled.get(name)!;
      expect(result.other).toEqual([]);
      expect(await runConsumer(result.dir)).toEqual(STORE_EXPECTED);
    },
    60_000,
  );

  // The shipped declarations reach ioredis's types only through storage/redis/ioredis-types,
  // whose aliases carry @ts-ignore: an app without ioredis type-checks them as `any`.
  it('every setting compiles with skipLibCheck false and ioredis NOT installed (no TS2307 on ioredis)', () => {
    const missing = [...compiled.entries()]
      .filter(([, result]) => result.missingIoredis.length > 0)
      .map(([name]) => name);
    expect(missing).toEqual([]);
  });
});
