import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ROOT } from '../support/build.js';

const run = promisify(execFile);
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc');
const DEV = (
  JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> }
).devDependencies;

/**
 * The NestJS packages a consumer project installs, pinned. NestJS 12 is the repository's own
 * (so npm's cache already holds it after `npm ci`); NestJS 11 is the last 11.x of each
 * package and @nestjs/config 4, the versions most running NestJS apps have.
 */
export const NEST_VERSIONS = {
  11: {
    '@nestjs/common': '11.2.10',
    '@nestjs/core': '11.2.10',
    '@nestjs/websockets': '11.2.6',
    '@nestjs/platform-ws': '11.2.6',
    '@nestjs/platform-express': '11.2.10',
    '@nestjs/config': '4.0.4',
    // The TypeScript NestJS 11 apps are on; the NestJS 12 project uses the repository's (6.x).
    typescript: '5.9.3',
  },
  12: Object.fromEntries(
    [
      '@nestjs/common',
      '@nestjs/core',
      '@nestjs/websockets',
      '@nestjs/platform-ws',
      '@nestjs/platform-express',
      '@nestjs/config',
    ].map((name) => [name, DEV[name]!]),
  ),
} as const;

/**
 * The socket.io driver each NestJS consumer also installs: @nestjs/platform-socket.io of its
 * NestJS (11.2.6 is the last 11.x, released with @nestjs/websockets 11.2.6; both pin
 * socket.io 4.8.3), and socket.io with socket.io-client at the repository's versions.
 */
export const SOCKET_IO_VERSIONS = {
  11: { '@nestjs/platform-socket.io': '11.2.6' },
  12: { '@nestjs/platform-socket.io': DEV['@nestjs/platform-socket.io']! },
} as const;
const SOCKET_IO_COMMON = ['socket.io', 'socket.io-client'];

/** What every consumer also installs, at the repository's versions. ioredis is never installed. */
const COMMON = ['reflect-metadata', 'rxjs', 'ws', '@types/ws', '@types/node'];

/** A consumer's TypeScript setting: its package type and the compiler options that matter. */
export interface Setting {
  name: string;
  type: 'commonjs' | 'module';
  module: string;
  moduleResolution: string;
}

/**
 * The settings NestJS apps use: `nest new` before NestJS 11 (CommonJS, node10), CommonJS
 * with node16 resolution, and the ESM ones. A CommonJS app on NestJS 12 (published as ES
 * modules only) needs a `module` setting that lets `require` load ES modules: node20 (with
 * node16 resolution) or nodenext; TypeScript refuses it under `module: node16` (TS1479).
 */
export function settingsFor(major: 11 | 12): Setting[] {
  return [
    { name: 'cjs-node10', type: 'commonjs', module: 'commonjs', moduleResolution: 'node10' },
    { name: 'cjs-node16', type: 'commonjs', module: major === 11 ? 'node16' : 'node20', moduleResolution: 'node16' },
    ...(major === 12
      ? [{ name: 'cjs-nodenext', type: 'commonjs', module: 'nodenext', moduleResolution: 'nodenext' }]
      : []),
    { name: 'esm-nodenext', type: 'module', module: 'nodenext', moduleResolution: 'nodenext' },
    { name: 'esm-bundler', type: 'module', module: 'esnext', moduleResolution: 'bundler' },
  ] as Setting[];
}

/**
 * Child processes run without Jest's NODE_OPTIONS, the outer `npm test`'s npm_* variables,
 * and any WS_RATE_LIMIT_* variable (the apps take the defaults).
 */
export function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    const skip = key.toLowerCase().startsWith('npm_') || key === 'NODE_OPTIONS' || key.startsWith('WS_RATE_LIMIT_');
    if (!skip) env[key] = value;
  }
  return env;
}

/**
 * Installs a consumer project: the tarball and the given packages, from npm's cache when it
 * has them. `peers: false` installs no peer dependency the list does not name (so the
 * store-only project has no @nestjs/config).
 */
export async function installProject(dir: string, tarball: string, packages: string[], peers = true): Promise<void> {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true }));
  const args = ['install', '--prefer-offline', '--no-audit', '--no-fund', '--no-package-lock', '--loglevel=error'];
  if (!peers) args.push('--legacy-peer-deps');
  await run('npm', [...args, tarball, ...packages], { cwd: dir, env: cleanEnv(), timeout: 300_000 });
}

/** The packages of a NestJS consumer of the given major, with the socket.io driver. */
export function nestPackages(major: 11 | 12): string[] {
  return [
    ...Object.entries({ ...NEST_VERSIONS[major], ...SOCKET_IO_VERSIONS[major] }).map(
      ([name, version]) => `${name}@${version}`,
    ),
    ...[...COMMON, ...SOCKET_IO_COMMON].map((name) => `${name}@${DEV[name]!}`),
  ];
}

/** The packages of the store-only consumer: @nestjs/common (the Redis store's Logger), no config. */
export function storePackages(): string[] {
  return [`@nestjs/common@${DEV['@nestjs/common']!}`, 'reflect-metadata', 'rxjs', '@types/node'].map((name) =>
    name.includes('@', 1) ? name : `${name}@${DEV[name]!}`,
  );
}

/** The outcome of compiling one consumer: tsc's diagnostics, split into ioredis's and the rest. */
export interface Compiled {
  dir: string;
  missingIoredis: string[];
  other: string[];
}

/**
 * Writes one consumer (package.json, tsconfig.json with `skipLibCheck: false`, main.ts) in
 * a folder of the project, so that it uses the project's node_modules, and compiles it.
 * TypeScript emits even when it reports errors, so the caller can run what it got.
 */
export async function compileConsumer(project: string, setting: Setting, source: string): Promise<Compiled> {
  const dir = join(project, setting.name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: setting.name, private: true, type: setting.type }));
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: setting.module,
        moduleResolution: setting.moduleResolution,
        // TypeScript 6 deprecates node10 resolution; apps on it say so to keep it.
        ...(setting.moduleResolution === 'node10' && tsMajor(project) >= 6 ? { ignoreDeprecations: '6.0' } : {}),
        strict: true,
        experimentalDecorators: true,
        emitDecoratorMetadata: true,
        esModuleInterop: true,
        skipLibCheck: false,
        types: ['node'],
        outDir: 'out',
      },
      files: ['main.ts'],
    }),
  );
  writeFileSync(join(dir, 'main.ts'), source);
  let output = '';
  try {
    await run(process.execPath, [tscOf(project), '-p', dir, '--pretty', 'false'], { cwd: dir, env: cleanEnv() });
  } catch (error) {
    output = String((error as { stdout?: string }).stdout ?? error);
  }
  const lines = output.split('\n').filter((line) => line.includes('error TS'));
  const isIoredis = (line: string): boolean => line.includes("Cannot find module 'ioredis'");
  return { dir, missingIoredis: lines.filter(isIoredis), other: lines.filter((line) => !isIoredis(line)) };
}

/** The project's own TypeScript compiler when it installed one, else the repository's. */
function tscOf(project: string): string {
  const own = join(project, 'node_modules/typescript/bin/tsc');
  return existsSync(own) ? own : TSC;
}

/** The major version of the TypeScript a project compiles with. */
function tsMajor(project: string): number {
  const manifest = join(tscOf(project), '../../package.json');
  return Number((JSON.parse(readFileSync(manifest, 'utf8')) as { version: string }).version.split('.')[0]);
}

/**
 * Runs a compiled consumer and returns the JSON its last line printed. The connection budget
 * keeps its burst of 5 but refills once in 100 s (the default is once a second): the sixth
 * connection is refused by the burst, not by the app opening it within a second, which a
 * cold process on a loaded machine may not.
 */
export async function runConsumer(dir: string): Promise<unknown> {
  if (!existsSync(join(dir, 'out/main.js'))) throw new Error(`${dir}: nothing was emitted`);
  const { stdout } = await run(process.execPath, [join(dir, 'out/main.js')], {
    cwd: dir,
    env: { ...cleanEnv(), WS_RATE_LIMIT_CONNECTION_REFILL_RATE: '0.01' },
    timeout: 60_000,
  });
  return JSON.parse(stdout.trim().split('\n').pop()!);
}

/** Runs `tasks` at most `limit` at a time (the machine has two cores). */
export async function pool<T>(tasks: Array<() => Promise<T>>, limit: number): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length) {
      const index = next++;
      results[index] = await tasks[index]!();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}
