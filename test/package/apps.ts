/**
 * The consumer apps of the package test, as source text: each is compiled by a consumer
 * project against the installed tarball and run there.
 */

/** The README's quick start (test/package/readme.spec.ts checks that the README quotes it). */
export const QUICK_START = `@WebSocketGateway()
@WsRateLimit() // the guard and the filter: rate_limit frames, repeat offenders closed
export class ChatGateway {
  @Throttle({ capacity: 30, refillRate: 15 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    return { event: 'ack', data };
  }
}

@Module({ imports: [WsRateLimitModule.forRoot()], providers: [ChatGateway] })
export class AppModule {}
`;

/**
 * How many chat messages the app sends at once: past the burst of 30, fewer than 10 refused
 * (10 would close). 39, not fewer: the bucket refills 15 a second, so 9 past the burst stay
 * past it even if the app (a fresh process on a loaded machine) takes 600 ms over them.
 */
const BURST = 39;

/**
 * A whole NestJS app: the README's quick start, WsRateLimitAdapter, the root import and
 * `/client`. It connects to itself with a real `ws` client, sends a burst past the chat
 * limit, opens five more rapid connections from the same address (the sixth in all is
 * refused with 429), and prints what it saw as one JSON line, then closes everything.
 */
export const GATEWAY_APP = `
import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Throttle, WsRateLimit, WsRateLimitAdapter, WsRateLimitModule } from 'nestjs-ws-rate-limit';
import { parseRateLimitFrame } from 'nestjs-ws-rate-limit/client';
import { WebSocket } from 'ws';
import type { AddressInfo } from 'node:net';

${QUICK_START}
/** Opens a connection: the socket, or the HTTP status that refused it. */
function connect(url: string): Promise<WebSocket | number> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    socket.once('open', () => resolve(socket));
    socket.once('unexpected-response', (_request, response) => {
      resolve(response.statusCode ?? 0);
      response.resume();
      socket.terminate();
    });
    socket.once('error', reject);
  });
}

async function main(): Promise<void> {
  const app = await NestFactory.create(AppModule, { logger: false });
  app.useWebSocketAdapter(new WsRateLimitAdapter(app));
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  const url = 'ws://127.0.0.1:' + port;
  const sockets: WebSocket[] = [];
  try {
    const first = await connect(url);
    if (typeof first === 'number') throw new Error('first connection refused: ' + first);
    sockets.push(first);
    const frames: unknown[] = [];
    const done = new Promise<void>((resolve) =>
      first.on('message', (text) => {
        frames.push(JSON.parse(text.toString()));
        if (frames.length === ${BURST}) resolve();
      }),
    );
    for (let i = 0; i < ${BURST}; i++) first.send(JSON.stringify({ event: 'chat', data: i }));
    await done;
    const acks = frames.filter((frame) => (frame as { event?: string }).event === 'ack').length;
    const info = frames.map(parseRateLimitFrame).find((parsed) => parsed !== undefined);
    const refused: number[] = [];
    for (let i = 0; i < 5; i++) {
      const next = await connect(url);
      if (typeof next === 'number') refused.push(next);
      else sockets.push(next);
    }
    const { retryAfter, ...limited } = info ?? { retryAfter: 0 };
    // The bucket refills 15 a second, so a slow machine may let one or two more through.
    const burst = acks >= 30 && acks < ${BURST} ? 'past the burst of 30' : acks + ' acks';
    console.log(JSON.stringify({ burst, limited, waits: retryAfter > 0, opened: sockets.length, refused }));
  } finally {
    for (const socket of sockets) socket.terminate();
    await app.close();
  }
}
void main();
`;

/** What GATEWAY_APP prints when the package works. */
export const GATEWAY_EXPECTED = {
  burst: 'past the burst of 30',
  limited: { code: 'TYPE_LIMIT', messageType: 'chat', limit: 30, remaining: 0, warningCount: 1 },
  waits: true,
  opened: 5,
  refused: [429],
};

/**
 * The store and the algorithms on their own, from \`nestjs-ws-rate-limit/store\`, in a
 * project without @nestjs/config (nor @nestjs/core, the WebSocket packages or ioredis).
 */
export const STORE_APP = `
import { MemoryRateLimitStore, createPlan, intervalMs, tokenBucketSpec } from 'nestjs-ws-rate-limit/store';
import type { RateLimitDecision } from 'nestjs-ws-rate-limit/store';

async function main(): Promise<void> {
  const store = new MemoryRateLimitStore({ maxKeys: 10 });
  const plan = createPlan(store, 'user-42', [tokenBucketSpec('global', 'g', 3, 0.01)]);
  const decisions: RateLimitDecision[] = [];
  for (let i = 0; i < 4; i++) decisions.push(await store.consume(plan));
  const refused = decisions.find((decision) => !decision.allowed);
  await store.close();
  console.log(
    JSON.stringify({
      allowed: decisions.filter((decision) => decision.allowed).length,
      refused: refused && !refused.allowed ? { tier: refused.tier, limit: refused.limit, remaining: refused.remaining } : null,
      interval: intervalMs(2),
    }),
  );
}
void main();
`;

/** What STORE_APP prints when the store works. */
export const STORE_EXPECTED = { allowed: 3, refused: { tier: 'global', limit: 3, remaining: 0 }, interval: 500 };

/**
 * The quick start's gateway on socket.io: WsRateLimitIoAdapter from
 * `nestjs-ws-rate-limit/socket.io`. A socket.io-client socket sends a burst past the chat
 * limit and counts the `ack` and `rate_limit` events; five more rapid connections over
 * HTTP long-polling follow (the sixth in all is refused at the handshake, and
 * socket.io-client reports the status as the connect_error's `description`).
 */
export const IO_GATEWAY_APP = `
import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { Throttle, WsRateLimit, WsRateLimitModule } from 'nestjs-ws-rate-limit';
import { WsRateLimitIoAdapter } from 'nestjs-ws-rate-limit/socket.io';
import { io, type Socket } from 'socket.io-client';
import type { AddressInfo } from 'node:net';

${QUICK_START}
/** Opens a socket.io connection: the socket, or what refused it (the HTTP status over polling). */
function connect(url: string, transport: 'websocket' | 'polling'): Promise<Socket | string> {
  return new Promise((resolve) => {
    const socket = io(url, { transports: [transport], reconnection: false, forceNew: true, timeout: 10_000 });
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (error: Error & { description?: unknown }) => {
      socket.disconnect();
      resolve(String(error.description ?? error.message));
    });
  });
}

async function main(): Promise<void> {
  const app = await NestFactory.create(AppModule, { logger: false });
  app.useWebSocketAdapter(new WsRateLimitIoAdapter(app));
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  const url = 'http://127.0.0.1:' + port;
  const sockets: Socket[] = [];
  try {
    const first = await connect(url, 'websocket');
    if (typeof first === 'string') throw new Error('first connection refused: ' + first);
    sockets.push(first);
    const events: Array<{ event: string; data: unknown }> = [];
    const done = new Promise<void>((resolve) =>
      first.onAny((event: string, data: unknown) => {
        events.push({ event, data });
        if (events.length === ${BURST}) resolve();
      }),
    );
    for (let i = 0; i < ${BURST}; i++) first.emit('chat', i);
    await done;
    const acks = events.filter((entry) => entry.event === 'ack').length;
    const info = events.find((entry) => entry.event === 'rate_limit')?.data as { retryAfter: number } | undefined;
    const refused: string[] = [];
    for (let i = 0; i < 5; i++) {
      const next = await connect(url, 'polling');
      if (typeof next === 'string') refused.push(next);
      else sockets.push(next);
    }
    const { retryAfter, ...limited } = info ?? { retryAfter: 0 };
    // The bucket refills 15 a second, so a slow machine may let one or two more through.
    const burst = acks >= 30 && acks < ${BURST} ? 'past the burst of 30' : acks + ' acks';
    console.log(JSON.stringify({ burst, limited, waits: retryAfter > 0, opened: sockets.length, refused }));
  } finally {
    for (const socket of sockets) socket.disconnect();
    await app.close();
  }
}
void main();
`;

/** What IO_GATEWAY_APP prints when the package works on socket.io. */
export const IO_GATEWAY_EXPECTED = {
  burst: 'past the burst of 30',
  limited: { code: 'TYPE_LIMIT', messageType: 'chat', limit: 30, remaining: 0, warningCount: 1 },
  waits: true,
  opened: 5,
  refused: ['429'],
};
