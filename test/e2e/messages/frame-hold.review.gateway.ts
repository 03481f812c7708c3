import { Injectable, UseFilters, UseGuards } from '@nestjs/common';
import { ConnectedSocket, MessageBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import {
  Throttle,
  WsRateLimitFilter,
  WsRateLimitService,
  WsThrottleGuard,
  type ConnectionState,
} from '../../../lib/index.js';
import type { Socket as IoSocket } from 'socket.io';

/** How the guard's tracker answers one message. */
export type TrackerMode = 'gate' | 'sync' | 'throw' | 'reject' | 'thenable';

/** What the review's guard does, and what its gateway saw. */
export const script = {
  /** Modes of the next trackers, in order; then `mode`. */
  modes: [] as TrackerMode[],
  mode: 'sync' as TrackerMode,
  /** Trackers asked for (one per message that reached the guard). */
  calls: 0,
  /** Messages whose handler ran, in order. */
  handled: [] as unknown[],
  /** The connection's held frames when the guard was asked each tracker. */
  heldAtGuard: [] as number[],
  /** The connection of the last message handled. */
  state: undefined as ConnectionState | undefined,
  open: (): void => undefined,
  opened: Promise.resolve(),
  reset(): void {
    this.modes = [];
    this.mode = 'sync';
    this.calls = 0;
    this.handled = [];
    this.heldAtGuard = [];
    this.state = undefined;
    this.opened = new Promise<void>((resolve) => (this.open = resolve));
  },
};

/** A guard whose tracker waits on a gate, throws, rejects or answers as the test scripts it. */
@Injectable()
export class ScriptedGuard extends WsThrottleGuard {
  protected override getTracker(_client: object, connection: ConnectionState): string | Promise<string> {
    script.calls++;
    script.heldAtGuard.push(connection.hold?.size ?? 0);
    const key = connection.connectionTracker;
    const mode = script.modes.shift() ?? script.mode;
    switch (mode) {
      case 'gate':
        return script.opened.then(() => key);
      case 'throw':
        throw new Error('tracker failed');
      case 'reject':
        return Promise.reject(new Error('tracker rejected'));
      case 'thenable':
        // A thenable that is not a native promise (as some libraries' query objects are):
        // it calls back at once and returns nothing.
        return { then: (resolve: (value: string) => void) => void resolve(key) } as unknown as Promise<string>;
      default:
        return key;
    }
  }
}

@WebSocketGateway()
@UseGuards(ScriptedGuard)
@UseFilters(WsRateLimitFilter)
export class ScriptedGateway {
  constructor(private readonly limiter: WsRateLimitService) {}

  /** On socket.io, an app middleware added once the connection is looked up (after the adapter's). */
  async handleConnection(client: object): Promise<void> {
    const socket = client as Partial<IoSocket>;
    if (typeof socket.use !== 'function') return;
    await Promise.resolve();
    socket.on!('error', () => undefined);
    socket.use((packet, next) => {
      const data = packet[1] as { block?: boolean; stall?: boolean } | undefined;
      if (data?.block === true) return next(new Error('blocked by the app'));
      if (data?.stall === true) return; // never passed on
      next();
    });
  }

  @Throttle({ type: 'chat', capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown, @ConnectedSocket() client: object) {
    const state = this.limiter.connectionOf(client);
    script.state = state;
    script.handled.push(data);
    return { event: 'ack', data };
  }

  @Throttle({ type: 'presence', capacity: 1, refillRate: 0.001 })
  @SubscribeMessage('presence')
  presence(@MessageBody() data: unknown) {
    script.handled.push(data);
    return { event: 'presence_ack', data };
  }
}

/** The same gateway on a namespace of its own (socket.io). */
@WebSocketGateway({ namespace: '/other' })
@UseGuards(ScriptedGuard)
@UseFilters(WsRateLimitFilter)
export class OtherNamespaceGateway {
  @Throttle({ type: 'chat', capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('chat')
  chat(@MessageBody() data: unknown) {
    script.handled.push(data);
    return { event: 'ack', data };
  }
}

/** A second gateway on the same ws path (NestJS shares the server between them). */
@WebSocketGateway()
@UseGuards(ScriptedGuard)
@UseFilters(WsRateLimitFilter)
export class SamePathGateway {
  @Throttle({ type: 'other', capacity: 1000, refillRate: 1000 })
  @SubscribeMessage('other')
  other(@MessageBody() data: unknown) {
    script.handled.push(`other:${String(data)}`);
    return { event: 'other_ack', data };
  }
}
