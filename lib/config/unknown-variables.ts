import { ENV_PREFIX, ENV_VARIABLES } from './env-variables.js';

/** A `WS_RATE_LIMIT_*` variable the module does not read, with the known name closest to it. */
export interface UnknownVariable {
  readonly name: string;
  /** The known variable it most likely means, when one is close enough to be a typo. */
  readonly closest: string | undefined;
}

const KNOWN = new Set(ENV_VARIABLES.map((variable) => variable.name));

/**
 * The names carrying the module's prefix that no option reads, e.g. a misspelled
 * `WS_RATE_LIMIT_GLOBAL_CAPACTIY`, which would otherwise be ignored without a word.
 */
export function unknownVariables(names: Iterable<string>): UnknownVariable[] {
  const unknown: UnknownVariable[] = [];
  for (const name of names) {
    if (!name.startsWith(ENV_PREFIX) || KNOWN.has(name)) continue;
    unknown.push({ name, closest: closestKnown(name) });
  }
  return unknown.sort((a, b) => (a.name < b.name ? -1 : 1));
}

/** The warning for one unknown variable. */
export function unknownVariableMessage({ name, closest }: UnknownVariable): string {
  const hint = closest === undefined ? 'no option reads it' : `did you mean ${closest}?`;
  return `${name} is not a variable of nestjs-ws-rate-limit and is ignored: ${hint}`;
}

/** The variables that only configure Redis: `WS_RATE_LIMIT_REDIS_*`. */
const REDIS_ONLY = ENV_VARIABLES.map((variable) => variable.name).filter((name) =>
  name.startsWith(`${ENV_PREFIX}REDIS_`),
);

/**
 * The `WS_RATE_LIMIT_REDIS_*` variables that are set (read through `read`) although the
 * store is the embedded `memory` one, so that nothing reads them: usually a deployment that
 * meant `WS_RATE_LIMIT_STORE=redis` and would otherwise run per-process limits without a
 * word. (A store given as an instance may read them itself: not reported.)
 */
export function ignoredRedisVariables(store: unknown, read: (name: string) => string | undefined): string[] {
  if (store !== 'memory') return [];
  // A blank value is unset, as for every variable.
  return REDIS_ONLY.filter((name) => (read(name)?.trim() ?? '') !== '');
}

/** The warning for Redis variables a store other than Redis ignores. */
export function ignoredRedisMessage(names: readonly string[]): string {
  return (
    `the store is memory, so nothing reads ${names.join(', ')}: ` +
    `set WS_RATE_LIMIT_STORE=redis (or the store option) to share limits through Redis`
  );
}

/** The known name at the smallest edit distance, if that distance is at most a third of the name's rest. */
function closestKnown(name: string): string | undefined {
  // Upper-cased: `WS_RATE_LIMIT_global_capacity` is a case away from a known name.
  const rest = name.slice(ENV_PREFIX.length).toUpperCase();
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(rest.length / 3)) + 1;
  for (const known of KNOWN) {
    const distance = editDistance(rest, known.slice(ENV_PREFIX.length), bestDistance);
    if (distance < bestDistance) {
      best = known;
      bestDistance = distance;
    }
  }
  return best;
}

/** Levenshtein distance with adjacent transpositions; stops early at `bound`. */
export function editDistance(a: string, b: string, bound: number): number {
  if (Math.abs(a.length - b.length) >= bound) return bound;
  let previous2: number[] = [];
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      const substitution = a[i - 1] === b[j - 1] ? 0 : 1;
      let value = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + substitution);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        value = Math.min(value, previous2[j - 2]! + 1);
      }
      current.push(value);
      rowMin = Math.min(rowMin, value);
    }
    if (rowMin >= bound) return bound;
    previous2 = previous;
    previous = current;
  }
  return previous[b.length]!;
}
