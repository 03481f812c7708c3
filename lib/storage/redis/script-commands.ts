import { createHash } from 'node:crypto';
import type { RedisStoreClient } from './client-factory.js';
import { RESERVE_LUA, UNRESERVE_LUA } from './reserve-scripts.js';
import { BLOCKS_LUA, CONSUME_LUA, FORGET_LUA, LEASES_LUA, PEEK_LUA, RELEASE_LUA } from './scripts.js';
import { tickWritesOf } from './tick-writes.js';

/** A script as a call: `(numkeys, ...KEYS, ...ARGV)`. */
export interface ScriptCall {
  (...args: string[]): Promise<unknown>;
  /** The same call with its arguments in an array, passed on without a copy. */
  readonly withArgs: (args: readonly string[]) => Promise<unknown>;
}

/** The store's scripts as calls on one client: `(numkeys, ...KEYS, ...ARGV)`. */
export interface Scripts {
  readonly consume: ScriptCall;
  readonly peek: ScriptCall;
  readonly release: ScriptCall;
  readonly leases: ScriptCall;
  readonly blocks: ScriptCall;
  readonly forget: ScriptCall;
  readonly reserve: ScriptCall;
  readonly unreserve: ScriptCall;
}

/**
 * Registers the scripts on the client (ioredis `defineCommand`: EVALSHA, resent as EVAL
 * after a `NOSCRIPT`), once per client and script version.
 */
export function registerScripts(client: RedisStoreClient): Scripts {
  const define = (name: string, lua: string, readOnly: boolean) => defineScript(client, name, lua, readOnly);
  return {
    consume: define('consume', CONSUME_LUA, false),
    peek: define('peek', PEEK_LUA, true),
    release: define('release', RELEASE_LUA, false),
    leases: define('leases', LEASES_LUA, false),
    blocks: define('blocks', BLOCKS_LUA, false),
    forget: define('forget', FORGET_LUA, false),
    reserve: define('reserve', RESERVE_LUA, false),
    unreserve: define('unreserve', UNRESERVE_LUA, false),
  };
}

/**
 * One script as a call on the client (ioredis `defineCommand`), defined once per client and
 * script text: the command's name carries the script's hash, so two versions of this
 * library (or two stores) can share a client. The calls of one tick share one socket
 * write (`TickWrites`).
 */
export function defineScript(client: RedisStoreClient, name: string, lua: string, readOnly: boolean): ScriptCall {
  const command = `wsrl_${name}_${createHash('sha1').update(lua).digest('hex').slice(0, 12)}`;
  const target = client as unknown as Record<string, unknown>;
  if (typeof target[command] !== 'function') client.defineCommand(command, { lua, readOnly });
  const call = target[command] as (...args: string[]) => Promise<unknown>;
  const writes = tickWritesOf(client);
  // ioredis copies the arguments into its command: the array is never written.
  const withArgs = (args: readonly string[]): Promise<unknown> => {
    writes.hold();
    return call.apply(client, args as string[]);
  };
  return Object.assign((...args: string[]) => withArgs(args), { withArgs });
}
