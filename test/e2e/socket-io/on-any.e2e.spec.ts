/*
 * socket.io's catch-all listeners (`socket.onAny`) behind `WsRateLimitIoAdapter`: socket.io
 * calls them for every event before any middleware or guard; the adapter keeps them from
 * that call and runs them once the limiter lets the event through (README "Catch-all
 * listeners"). A gateway no guard of ours decides still has them heard, before its handlers;
 * decisions that wait (an asynchronous tracker) have them heard in arrival order when they
 * settle; a listener a middleware adds while an event is on its way hears that event too (it is
 * heard with the listeners there are when it is let through).
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { Namespace, Socket } from 'socket.io';
import { Throttle, WsRateLimit } from '../../../lib/index.js';
import { ENGINE_TRANSPORTS, waitFor } from '../../support/io-client.js';
import { ioHarness } from '../../support/io-harness.js';
import { sleep } from '../../support/ws-client.js';

/** What happened, in order: `any:<nsp>:<event>:<id>` and `handler:<nsp>:<event>:<id>`. */
const seen: string[] = [];
const idOf = (data: unknown): unknown => (data as { id?: unknown } | null)?.id;

/**
 * What the catch-alls heard (`any:` and `late:` entries, in order), and that each event with
 * a handler was heard before its handler ran (socket.io hears every event of one read before
 * it runs their handlers, a tick later).
 */
function heard(): string[] {
  for (const entry of seen.filter((line) => line.startsWith('handler:'))) {
    const any = seen.indexOf(entry.replace('handler:', 'any:'));
    expect(any).toBeGreaterThanOrEqual(0);
    expect(any).toBeLessThan(seen.indexOf(entry));
  }
  return seen.filter((line) => !line.startsWith('handler:'));
}

/** The handlers that ran, in order. */
const handled = (): string[] => seen.filter((line) => line.startsWith('handler:'));

@WebSocketGateway({ namespace: '/guarded' })
@WsRateLimit()
class GuardedGateway {
  handleConnection(socket: Socket): void {
    socket.onAny((event: string, data: unknown) => void seen.push(`any:/guarded:${event}:${String(idOf(data))}`));
  }

  @Throttle({ type: 'chat', capacity: 2, refillRate: 0.001 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    seen.push(`handler:/guarded:chat:${String(idOf(data))}`);
    return { event: 'chat_ok', data };
  }
}

/** No guard of ours: every event is the application's, heard before its handler as socket.io does. */
@WebSocketGateway({ namespace: '/open' })
class OpenGateway {
  afterInit(namespace: Namespace): void {
    // A middleware that adds a catch-all while socket.io handles an event (kept, not lost).
    namespace.use((socket, next) => {
      socket.use((_packet, go) => {
        if (!(socket.data as { late?: boolean }).late) {
          (socket.data as { late?: boolean }).late = true;
          socket.onAny((event: string, data: unknown) => void seen.push(`late:/open:${event}:${String(idOf(data))}`));
        }
        go();
      });
      next();
    });
  }

  handleConnection(socket: Socket): void {
    socket.onAny((event: string, data: unknown) => void seen.push(`any:/open:${event}:${String(idOf(data))}`));
  }

  @SubscribeMessage('note')
  note(@MessageBody() data: unknown) {
    seen.push(`handler:/open:note:${String(idOf(data))}`);
    return { event: 'note_ok', data };
  }
}

describe.each(ENGINE_TRANSPORTS)('socket.onAny behind WsRateLimitIoAdapter (%s)', (transport) => {
  const harness = ioHarness();

  afterEach(async () => {
    seen.length = 0;
    await harness.close();
  });

  it('a guarded gateway: admitted events are heard, before their handler; refused ones and unknown ones over the budget are not', async () => {
    const url = await harness.start([GuardedGateway], { global: { capacity: 4, refillRate: 0.001 } });
    const client = await harness.connect(`${url}/guarded`, transport);
    for (let id = 0; id < 4; id++) client.socket.emit('chat', { id });
    // Unknown events: charged to the global budget (2 of 4 left after chats 0-1): 10-11 pass, 12 is refused.
    for (let id = 10; id < 13; id++) client.socket.emit('whatever', { id });
    await client.until(() => client.of('rate_limit').length === 3, 10_000);
    await sleep(100);
    expect(heard()).toEqual([
      'any:/guarded:chat:0',
      'any:/guarded:chat:1',
      'any:/guarded:whatever:10',
      'any:/guarded:whatever:11',
    ]);
    expect(handled()).toEqual(['handler:/guarded:chat:0', 'handler:/guarded:chat:1']);
  });

  it('decisions that wait (an asynchronous tracker): heard when admitted, in arrival order', async () => {
    const url = await harness.start([GuardedGateway], {
      tracker: async () => {
        await sleep(5);
        return 'everyone';
      },
    });
    const client = await harness.connect(`${url}/guarded`, transport);
    for (let id = 0; id < 4; id++) client.socket.emit('chat', { id });
    await client.until(() => client.of('rate_limit').length === 2, 10_000);
    await sleep(100);
    expect(heard()).toEqual(['any:/guarded:chat:0', 'any:/guarded:chat:1']);
    expect(handled()).toEqual(['handler:/guarded:chat:0', 'handler:/guarded:chat:1']);
  });

  it('a gateway no guard of ours decides: every event heard, before its handler; a listener a middleware adds hears from that event on', async () => {
    const url = await harness.start([OpenGateway]);
    const client = await harness.connect(`${url}/open`, transport);
    for (let id = 0; id < 3; id++) client.socket.emit('note', { id });
    await waitFor(() => client.of('note_ok').length === 3, 10_000, 'three replies');
    expect(heard()).toEqual([
      'any:/open:note:0',
      'late:/open:note:0',
      'any:/open:note:1',
      'late:/open:note:1',
      'any:/open:note:2',
      'late:/open:note:2',
    ]);
    expect(handled()).toEqual(['handler:/open:note:0', 'handler:/open:note:1', 'handler:/open:note:2']);
  });
});
