import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** The repository root (tests run with it as the working directory). */
export const ROOT = process.cwd();

/**
 * Builds the package (dist/esm, dist/cjs) and the sample (dist/sample) unless a build at
 * least as new as the given sources is there already. `npm test` builds first, so this
 * only does work when a test file is run on its own.
 */
export function ensureBuilt(what: 'package' | 'sample'): void {
  const target = what === 'package' ? join(ROOT, 'dist/esm/index.js') : join(ROOT, 'dist/sample/main.js');
  const source = what === 'package' ? join(ROOT, 'lib/index.ts') : join(ROOT, 'sample/main.ts');
  if (existsSync(target) && statSync(target).mtimeMs >= statSync(source).mtimeMs) return;
  execFileSync('npm', ['run', what === 'package' ? 'build' : 'build:sample', '--silent'], { cwd: ROOT, stdio: 'pipe' });
}
