import { createHash } from 'node:crypto';

/**
 * Whose budget a message spends, as a typed value: a connection (tiers kept exact in this
 * process), a client address, or a name a `tracker` function returned (both shared through
 * the store). `key` is the string the store and the events see; it is byte-identical to
 * the one earlier versions built (`conn:17`, `ip:203.0.113.9`, `key:user-42`), so stored
 * keys do not change.
 */
export interface Tracker {
  readonly kind: TrackerKind;
  /** The connection id, the address key, or the name. */
  readonly id: string;
  /** The tracker as stores, events and blocks name it. */
  readonly key: string;
}

/** What a tracker names. */
export type TrackerKind = 'connection' | 'address' | 'name';

const PREFIXES: Readonly<Record<TrackerKind, string>> = { connection: 'conn:', address: 'ip:', name: 'key:' };

function tracker(kind: TrackerKind, id: string): Tracker {
  return Object.freeze({ kind, id, key: PREFIXES[kind] + id });
}

/** The tracker of one connection's own tiers. */
export function connectionTracker(id: number): Tracker {
  return tracker('connection', String(id));
}

/** The tracker of a client address key (see `clientAddressKey`). */
export function addressTracker(ip: string): Tracker {
  return tracker('address', ip);
}

/**
 * Names longer than this are keyed by a digest: a name a `tracker` function returns is often
 * the client's (an API key, a token's subject), and the store keeps every key it holds.
 */
export const MAX_TRACKER_NAME = 256;

/**
 * The tracker of a name, as a `tracker` function or code (`consume('user-42')`) gives it. A
 * name over `MAX_TRACKER_NAME` characters is keyed `key#<sha256, base64url>` (its `id` stays
 * the name): 50 bytes of key however long the name, where a 32 KiB name held 32 KiB per
 * tracker in the memory store (a shorter name's key starts `key:`, so none is keyed alike).
 */
export function namedTracker(name: string): Tracker {
  if (name.length <= MAX_TRACKER_NAME) return tracker('name', name);
  const digest = createHash('sha256').update(name, 'utf16le').digest('base64url');
  return Object.freeze({ kind: 'name', id: name, key: `key#${digest}` });
}

/** Whether a tracker's tiers live in this process (per connection) rather than in the store. */
export function isLocal(value: Tracker): boolean {
  return value.kind === 'connection';
}

/**
 * Reads a tracker key back into its value. The one place that knows the key's prefixes:
 * it serves trackers that arrive as strings from outside the library (an overridden
 * `getTracker`, a plan built with `createPlan`). A string with no known prefix is a name
 * taken as it is (its key is the string itself, as before).
 */
export function trackerOfKey(key: string): Tracker {
  for (const kind of ['connection', 'address', 'name'] as const) {
    if (key.startsWith(PREFIXES[kind])) return Object.freeze({ kind, id: key.slice(PREFIXES[kind].length), key });
  }
  return Object.freeze({ kind: 'name', id: key, key });
}
