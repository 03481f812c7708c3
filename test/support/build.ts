import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
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
  const sources = what === 'package' ? [join(ROOT, 'lib')] : [join(ROOT, 'lib'), join(ROOT, 'sample')];
  if (existsSync(target) && statSync(target).mtimeMs >= Math.max(...sources.map(newestIn))) return;
  if (what === 'sample') ensureBuilt('package');
  execFileSync('npm', ['run', what === 'package' ? 'build' : 'build:sample', '--silent'], { cwd: ROOT, stdio: 'pipe' });
}

/** The newest modification time of any file under a directory. */
function newestIn(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestIn(path) : statSync(path).mtimeMs);
  }
  return newest;
}
