/*
 * 22 cases; 3 failed on 46acaeb, fixed: catch-all listeners were run while the adapter held
 * socket.io's array of them aside, so a listener's `offAny` was lost and `prependAny` put its
 * listener last. The adapter now handles events as socket.io's `onevent` does without its
 * call of them (socket.io's methods work on its own array), and hears an event with the
 * listeners there are when it is let through: one a middleware adds while the event is on its
 * way hears that event too (socket.io alone would call it from the next event on).
 *
 * Adversarial review (2) of the fixes of 0eafff7..46acaeb: store answers checked
 * (lib/storage/store-answers.ts, lib/services/shared-store.ts), catch-all listeners heard
 * once the limiter lets an event through (lib/adapters/ws-rate-limit-io.adapter.ts), and a
 * retried refused first namespace join charged a connection-rate token
 * (lib/adapters/namespace-guard.ts, lib/connection/connection-admission.ts).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { Redis } from 'ioredis';
import type { Namespace, Socket } from 'socket.io';
import type { Socket as ClientSocket } from 'socket.io-client';
import { SkipThrottle, Throttle, WsRateLimit } from '../../lib/index.js';
import type {
  RateLimitDecision,
  RateLimitPlan,
  TierSpec,
  TokenBucketSpec,
} from '../../lib/interfaces/plan.interface.js';
import { createPlan } from '../../lib/plans/create-plan.js';
import { concurrencySpec, tokenBucketSpec, windowSpec } from '../../lib/plans/tier-specs.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import type { RateLimitStore } from '../../lib/storage/rate-limit-store.js';
import { RedisRateLimitStore } from '../../lib/storage/redis/index.js';
import { checkedDecision, checkedStatuses } from '../../lib/storage/store-answers.js';
import { waitFor } from '../support/io-client.js';
import { ioHarness, joined } from '../support/io-harness.js';
import { startRedis, type RedisServer } from '../support/redis-server.js';
import { sleep } from '../support/ws-client.js';
import { closeClient, ready, storeClient } from '../redis/helpers.js';

// --- 1. Built-in stores' answers pass the check unchanged ------------------------------

/** A bucket whose cost (3 more than its capacity) can never be paid: the stores answer a wait of never. */
function aboveCapacity(spec: TokenBucketSpec): TokenBucketSpec {
  const cost = spec.limit + 3;
  return { ...spec, cost, slack: -3 * spec.intervalMs, span: cost * spec.intervalMs };
}

/** Plans of every tier kind, each driven to a refusal; costs above limits (never) included. */
const SHAPES: Array<[string, TierSpec[]]> = [
  ['token bucket', [tokenBucketSpec('global', 'g', 3, 0.5)]],
  ['token bucket, cost above capacity (a spec made by hand)', [aboveCapacity(tokenBucketSpec('type', 't', 2, 1))]],
  ['sliding log', [windowSpec('expensive', 'x', 'sliding-log', 2, 60_000)]],
  ['sliding log, cost above limit', [{ ...windowSpec('expensive', 'xl', 'sliding-log', 2, 60_000), cost: 3 }]],
  ['sliding counter', [windowSpec('expensive', 'xc', 'sliding-counter', 2.5, 60_000)]],
  ['sliding counter, cost above limit', [{ ...windowSpec('expensive', 'xd', 'sliding-counter', 2, 60_000), cost: 3 }]],
  ['concurrency', [concurrencySpec('concurrency', 'c', 1)]],
  [
    'several tiers, the last refusing',
    [tokenBucketSpec('global', 'g2', 100, 100), tokenBucketSpec('connection', 'cr', 2, 0.25)],
  ],
  [
    'several tiers, the first refusing',
    [windowSpec('expensive', 'x2', 'sliding-log', 1, 60_000), tokenBucketSpec('type', 't2', 100, 100)],
  ],
];

async function refusalsOf(store: RateLimitStore, tracker: string, specs: TierSpec[]): Promise<RateLimitDecision[]> {
  const lease = specs.some((spec) => spec.tier === 'concurrency') ? 'lease-1' : undefined;
  const plan: RateLimitPlan = createPlan(store, tracker, specs, lease);
  const answers: RateLimitDecision[] = [];
  for (let i = 0; i < 6; i++) answers.push(await store.consume(plan));
  return answers;
}

describe('built-in stores: every answer passes the check as it is', () => {
  let server: RedisServer;
  let client: Redis;
  let redis: RedisRateLimitStore;

  beforeAll(async () => {
    server = await startRedis();
    client = storeClient(server.port);
    await ready(client);
    redis = new RedisRateLimitStore({ client, keyPrefix: 'review2:', commandTimeoutMs: 10_000 });
  });

  afterAll(async () => {
    await redis?.close();
    await closeClient(client);
    await server?.stop();
  });

  it.each(SHAPES)('%s: memory and Redis refusals (and peeks) are decisions, unchanged', async (_name, specs) => {
    const memory = new MemoryRateLimitStore();
    for (const store of [memory, redis] as RateLimitStore[]) {
      const answers = await refusalsOf(store, `ip:${_name}`, specs);
      expect(answers.some((answer) => !answer.allowed)).toBe(true);
      for (const answer of answers) expect(checkedDecision(answer)).toBe(answer);
      const plan = createPlan(store, `ip:${_name}`, specs);
      const statuses = await store.peek(plan);
      expect(checkedStatuses(statuses, plan)).toBe(statuses);
    }
    await memory.close();
  });
});

// --- 2. Catch-all listeners (socket.onAny) ---------------------------------------------

const log: string[] = [];
const idOf = (data: unknown): unknown => (data as { id?: unknown } | null)?.id;

/** A guarded gateway whose catch-all removes itself after the first event it hears (once). */
@WebSocketGateway({ namespace: '/once' })
@WsRateLimit()
class OnceGateway {
  handleConnection(socket: Socket): void {
    const once = (event: string, data: unknown): void => {
      log.push(`once:${event}:${String(idOf(data))}`);
      socket.offAny(once);
    };
    socket.onAny(once);
    socket.onAny((event: string, data: unknown) => void log.push(`all:${event}:${String(idOf(data))}`));
  }

  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    log.push(`handler:chat:${String(idOf(data))}`);
    return { event: 'chat_ok', data };
  }
}

/** No guard of ours: the catch-all that removes itself (socket.io: heard once). */
@WebSocketGateway({ namespace: '/plain' })
class PlainGateway {
  handleConnection(socket: Socket): void {
    const once = (event: string, data: unknown): void => {
      log.push(`once:${event}:${String(idOf(data))}`);
      socket.offAny(once);
    };
    socket.onAny(once);
  }

  @SubscribeMessage('note')
  note(@MessageBody() data: unknown) {
    log.push(`handler:note:${String(idOf(data))}`);
    return { event: 'note_ok', data };
  }
}

/** A middleware that puts a catch-all first (`prependAny`) while the first event is handled. */
@WebSocketGateway({ namespace: '/prepend' })
class PrependGateway {
  afterInit(namespace: Namespace): void {
    namespace.use((socket, next) => {
      socket.use((_packet, go) => {
        const data = socket.data as { added?: boolean };
        if (!data.added) {
          data.added = true;
          socket.prependAny((event: string, body: unknown) => void log.push(`first:${event}:${String(idOf(body))}`));
        }
        go();
      });
      next();
    });
  }

  handleConnection(socket: Socket): void {
    socket.onAny((event: string, data: unknown) => void log.push(`any:${event}:${String(idOf(data))}`));
  }

  @SubscribeMessage('note')
  note(@MessageBody() data: unknown) {
    log.push(`handler:note:${String(idOf(data))}`);
    return { event: 'note_ok', data };
  }
}

/** Acks, a skipped handler, a throttled handler; the catch-all records whether it got the ack. */
@WebSocketGateway({ namespace: '/acks' })
@WsRateLimit()
class AckGateway {
  handleConnection(socket: Socket): void {
    socket.onAny((...args: unknown[]) => {
      const last = args[args.length - 1];
      log.push(`any:${String(args[0])}:${String(idOf(args[1]))}:${typeof last === 'function' ? 'ack' : 'noack'}`);
    });
  }

  @Throttle({ type: 'ask', capacity: 2, refillRate: 0.001 })
  @SubscribeMessage('ask')
  ask(@MessageBody() data: unknown) {
    log.push(`handler:ask:${String(idOf(data))}`);
    return { ok: idOf(data) };
  }

  @SkipThrottle()
  @SubscribeMessage('free')
  free(@MessageBody() data: unknown) {
    log.push(`handler:free:${String(idOf(data))}`);
    return { ok: idOf(data) };
  }
}

function ask(socket: ClientSocket, event: string, id: number): Promise<unknown> {
  return new Promise((resolve) => {
    socket.timeout(10_000).emit(event, { id }, (error: Error | null, answer?: unknown) => resolve(error ?? answer));
  });
}

describe('socket.onAny behind WsRateLimitIoAdapter (review 2)', () => {
  const harness = ioHarness();

  afterEach(async () => {
    log.length = 0;
    await harness.close();
  });

  it('a catch-all that removes itself (offAny) when it hears an event no handler takes hears only that one (it heard all three)', async () => {
    const url = await harness.start([OnceGateway]);
    const client = await harness.connect(`${url}/once`, 'websocket');
    for (let id = 0; id < 3; id++) client.socket.emit('whatever', { id });
    await waitFor(() => log.filter((line) => line.startsWith('all:')).length === 3, 10_000, 'three heard');
    await sleep(100);
    // socket.io: `offAny` from the listener takes effect at once; the listener heard event 0 only.
    expect(log.filter((line) => line.startsWith('once:'))).toEqual(['once:whatever:0']);
  });

  it('a catch-all that removes itself when it hears a guarded event (heard a tick later) hears only that one', async () => {
    const url = await harness.start([OnceGateway]);
    const client = await harness.connect(`${url}/once`, 'websocket');
    for (let id = 0; id < 3; id++) client.socket.emit('chat', { id });
    await client.until(() => client.of('chat_ok').length === 3);
    expect(log.filter((line) => line.startsWith('once:'))).toEqual(['once:chat:0']);
  });

  it('on a gateway no guard of ours decides, a catch-all that removes itself (offAny) hears one event, as socket.io alone (it heard two)', async () => {
    const url = await harness.start([PlainGateway]);
    const client = await harness.connect(`${url}/plain`, 'websocket');
    for (let id = 0; id < 3; id++) client.socket.emit('note', { id });
    await client.until(() => client.of('note_ok').length === 3);
    expect(log.filter((line) => line.startsWith('once:'))).toEqual(['once:note:0']);
  });

  it('a catch-all a middleware adds with prependAny while an event is on its way is heard first, that event included (it was heard last)', async () => {
    const url = await harness.start([PrependGateway]);
    const client = await harness.connect(`${url}/prepend`, 'websocket');
    for (let id = 0; id < 2; id++) client.socket.emit('note', { id });
    await client.until(() => client.of('note_ok').length === 2);
    expect(log.filter((line) => !line.startsWith('handler:'))).toEqual([
      'first:note:0',
      'any:note:0',
      'first:note:1',
      'any:note:1',
    ]);
  });

  it('acks: the catch-all gets the ack function, hears admitted events once; a refused one is not heard and its ack gets the refusal', async () => {
    const url = await harness.start([AckGateway]);
    const client = await harness.connect(`${url}/acks`, 'websocket');
    const answers = [];
    for (let id = 0; id < 3; id++) answers.push(await ask(client.socket, 'ask', id));
    expect(answers.slice(0, 2)).toEqual([{ ok: 0 }, { ok: 1 }]);
    expect(answers[2]).toMatchObject({ event: 'rate_limit' });
    await sleep(100);
    expect(log).toEqual(['any:ask:0:ack', 'handler:ask:0', 'any:ask:1:ack', 'handler:ask:1']);
  });

  it('@SkipThrottle handler and shadow mode: every event heard once, before its handler', async () => {
    const url = await harness.start([AckGateway], { shadow: true });
    const client = await harness.connect(`${url}/acks`, 'websocket');
    for (let id = 0; id < 4; id++) await ask(client.socket, 'ask', id);
    for (let id = 10; id < 12; id++) await ask(client.socket, 'free', id);
    await sleep(100);
    expect(log).toEqual([
      ...[0, 1, 2, 3].flatMap((id) => [`any:ask:${id}:ack`, `handler:ask:${id}`]),
      ...[10, 11].flatMap((id) => [`any:free:${id}:ack`, `handler:free:${id}`]),
    ]);
  });

  it('decisions that wait (async tracker): a skipped handler and a throttled one heard once each, in order, refused ones not', async () => {
    const url = await harness.start([AckGateway], {
      tracker: async () => {
        await sleep(5);
        return 'everyone';
      },
    });
    const client = await harness.connect(`${url}/acks`, 'websocket');
    const answers = await Promise.all([
      ask(client.socket, 'ask', 0),
      ask(client.socket, 'free', 10),
      ask(client.socket, 'ask', 1),
      ask(client.socket, 'ask', 2),
      ask(client.socket, 'free', 11),
    ]);
    expect(answers[3]).toMatchObject({ event: 'rate_limit' });
    await sleep(100);
    expect(log.filter((line) => line.startsWith('any:'))).toEqual([
      'any:ask:0:ack',
      'any:free:10:ack',
      'any:ask:1:ack',
      'any:free:11:ack',
    ]);
  });
});

// --- 3. Retried refused first joins ----------------------------------------------------

let vaultRuns = 0;

@WebSocketGateway({ namespace: '/chat' })
@WsRateLimit()
class ChatGateway {
  @SubscribeMessage('hello')
  hello() {
    return { event: 'hello', data: 1 };
  }
}

@WebSocketGateway({ namespace: '/vault' })
@WsRateLimit()
class VaultGateway {
  afterInit(namespace: Namespace): void {
    namespace.use((socket, next) => {
      vaultRuns++;
      if ((socket.handshake.auth as { token?: string }).token === 'ok') return next();
      next(new Error('auth'));
    });
  }

  @SubscribeMessage('secret')
  secret() {
    return { event: 'secret', data: 42 };
  }
}

describe.each(['memory', 'redis'] as const)('retried refused first joins (%s store)', (storeKind) => {
  const harness = ioHarness();
  let server: RedisServer | undefined;

  beforeAll(async () => {
    if (storeKind === 'redis') server = await startRedis();
  });
  afterAll(async () => {
    await server?.stop();
  });
  afterEach(async () => {
    vaultRuns = 0;
    await harness.close();
  });

  const start = (options: Record<string, unknown>) =>
    harness.start([ChatGateway, VaultGateway], {
      ...(storeKind === 'redis' ? { store: 'redis', redis: { url: `redis://127.0.0.1:${server!.port}` } } : {}),
      ...options,
    });
  const rateLeft = async (): Promise<number> => {
    const statuses = await harness.limiter().connectionStatus('127.0.0.1');
    return statuses.find((status) => status.tier === 'connection')!.remaining;
  };

  it('a handshake costs one token; the first join and a second namespace nothing more; each retry one, at the cap too', async () => {
    const url = await start({ connection: { capacity: 10, refillRate: 0.001 }, maxConnectionsPerIp: 1 });
    const made = harness.manager(url, 'websocket');
    const chat = made.socket('/chat');
    expect(await joined(chat)).toBe('connected');
    expect(await rateLeft()).toBe(9);
    const vault = made.socket('/vault', { auth: { token: 'bad' } });
    expect(await joined(vault)).toBe('auth');
    expect(await rateLeft()).toBe(9);
    for (let i = 0; i < 3; i++) expect(await joined(vault)).toBe('auth');
    expect(await rateLeft()).toBe(6);
    vault.auth = { token: 'ok' };
    expect(await joined(vault)).toBe('connected');
    expect(await rateLeft()).toBe(5);
    expect(vaultRuns).toBe(5);
    made.engine.close();
  });

  it('retries beyond the connection-rate bucket are refused by the limiter (the app middleware not run), with a connect_error', async () => {
    const url = await start({ connection: { capacity: 3, refillRate: 0.001 } });
    const made = harness.manager(url, 'websocket');
    const vault = made.socket('/vault', { auth: { token: 'bad' } });
    const outcomes: string[] = [];
    for (let i = 0; i < 5; i++) outcomes.push(await joined(vault));
    // 1 handshake + first join (free) + 2 retries = 3 tokens; the 4th and 5th attempts refused.
    expect(outcomes.slice(0, 3)).toEqual(['auth', 'auth', 'auth']);
    expect(outcomes.slice(3).every((outcome) => outcome !== 'auth')).toBe(true);
    expect(vaultRuns).toBe(3);
    expect(await rateLeft()).toBe(0);
    made.engine.close();
  });

  it('a block of the address put after the handshake refuses the retry', async () => {
    const url = await start({ connection: { capacity: 50, refillRate: 50 } });
    const made = harness.manager(url, 'websocket');
    const vault = made.socket('/vault', { auth: { token: 'bad' } });
    expect(await joined(vault)).toBe('auth');
    await harness.limiter().block('127.0.0.1', 60_000);
    vault.auth = { token: 'ok' };
    expect(await joined(vault)).not.toBe('connected');
    expect(vaultRuns).toBe(1);
    made.engine.close();
  });
});
