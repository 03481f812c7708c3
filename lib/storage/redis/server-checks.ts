import type { Redis } from './ioredis-types.js';
import { mastersOf, type RedisStoreClient } from './client-factory.js';

const noop = (): void => undefined;

/** How long a start-up read of server settings may take. */
const CHECK_MS = 1000;

/**
 * `reply` of `command` on each server (every master of a Cluster), or `undefined` for a
 * server that refused it or did not answer within a second. Never rejects.
 */
async function askMasters(client: RedisStoreClient, command: string[]): Promise<{ node: string; reply: unknown }[]> {
  const servers: Redis[] = mastersOf(client);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(resolve, CHECK_MS, undefined);
    timer.unref();
  });
  try {
    return await Promise.all(
      servers.map((server) =>
        Promise.race([server.call(command[0]!, ...command.slice(1)).catch(noop), late]).then((reply) => ({
          node: `${server.options.host ?? ''}:${server.options.port ?? ''}`,
          reply: reply as unknown,
        })),
      ),
    );
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `CONFIG GET maxmemory-policy` of the server, or of every master of a Cluster. Servers that
 * refuse CONFIG (managed services, ACLs) or do not answer within a second are left out.
 */
export async function readEvictionPolicies(client: RedisStoreClient): Promise<{ node: string; policy: string }[]> {
  const replies = await askMasters(client, ['CONFIG', 'GET', 'maxmemory-policy']);
  return replies
    .map(({ node, reply }) => ({ node, policy: policyOf(reply) }))
    .filter((reply): reply is { node: string; policy: string } => reply.policy !== undefined);
}

/** The start-up warning for servers whose `maxmemory-policy` may evict limiter keys, if any. */
export function evictionWarning(policies: { node: string; policy: string }[], cluster: boolean): string | undefined {
  const evicting = policies.filter(({ policy }) => policy !== 'noeviction');
  if (evicting.length === 0) return undefined;
  const named = [...new Set(evicting.map(({ policy }) => policy))].join(', ');
  const where = cluster ? ` on ${evicting.map(({ node }) => node).join(', ')}` : '';
  return (
    `Redis maxmemory-policy is ${named}${where}: at maxmemory, Redis may evict rate-limit keys (every one ` +
    "carries a TTL), and an evicted key's limit silently starts over. Set maxmemory-policy noeviction " +
    'on the Redis that holds the limits.'
  );
}

/** The value of a `CONFIG GET maxmemory-policy` reply: RESP2 `[name, value]`, or a RESP3 map. */
function policyOf(reply: unknown): string | undefined {
  let value: unknown;
  if (Array.isArray(reply)) value = reply[1];
  else if (reply instanceof Map) value = reply.get('maxmemory-policy');
  else if (reply !== null && typeof reply === 'object') value = (reply as Record<string, unknown>)['maxmemory-policy'];
  return typeof value === 'string' && value !== '' ? value.toLowerCase() : undefined;
}

/**
 * How the scripts give tracker-hash fields their TTLs (the scripts' argument says which):
 * 0, no hash-field TTLs (the hash has one TTL); 1, HSET then HPEXPIRE (Redis 7.4); 2,
 * HSETEX, the values and their TTL in one command (Redis 8.0 and later).
 */
export type FieldTtlMode = 0 | 1 | 2;

/**
 * The field-TTL mode every master (the server, or every master of a Cluster) supports, from
 * `INFO server`'s `redis_version`: the least of theirs. Undefined, unknown, when any refuses
 * INFO or does not answer within a second (the store then keeps the mode it has: at first
 * 0, the fallback, which works on every version). Servers that report an older compatible
 * version (Valkey says 7.2.4) get the fallback.
 */
export async function readFieldTtlSupport(client: RedisStoreClient): Promise<FieldTtlMode | undefined> {
  const replies = await askMasters(client, ['INFO', 'server']);
  if (replies.length === 0 || replies.some(({ reply }) => reply === undefined)) return undefined;
  return Math.min(...replies.map(({ reply }) => fieldTtlModeOf(reply))) as FieldTtlMode;
}

/** The field-TTL mode of the Redis version an `INFO server` reply names. */
export function fieldTtlModeOf(info: unknown): FieldTtlMode {
  const match = /^redis_version:(\d+)\.(\d+)/m.exec(typeof info === 'string' ? info : String(info ?? ''));
  if (match === null) return 0;
  const [major, minor] = [Number(match[1]), Number(match[2])];
  if (major >= 8) return 2;
  return major === 7 && minor >= 4 ? 1 : 0;
}

/** Whether an `INFO server` reply names a Redis version of 7.4 or later (hash-field TTLs). */
export function hasFieldTtls(info: unknown): boolean {
  return fieldTtlModeOf(info) > 0;
}
