import { describe, expect, it } from '@jest/globals';
import { resolveOptions } from '../../lib/config/resolve-options.js';
import { WsRateLimitException } from '../../lib/exceptions/ws-rate-limit.exception.js';
import type { RateLimitEvent } from '../../lib/interfaces/event.interface.js';
import type { RateLimitRejected } from '../../lib/interfaces/plan.interface.js';
import type { WsRateLimitModuleOptions } from '../../lib/interfaces/options.interface.js';
import { Telemetry } from '../../lib/metrics/telemetry.js';
import { Enforcer } from '../../lib/pipeline/enforcer.js';
import { fakeConnection, fakeSocket } from './support/fake-transport.js';

const quiet = { warn: () => undefined, debug: () => undefined };
const rejected: RateLimitRejected = { allowed: false, tier: 'type', index: 1, retryAfter: 200, limit: 5, remaining: 0 };

function enforcer(options: WsRateLimitModuleOptions = {}) {
  const resolved = resolveOptions({ useEnv: false, ...options });
  const telemetry = new Telemetry(!resolved.shadow);
  const events: RateLimitEvent[] = [];
  telemetry.events$.subscribe((event) => events.push(event));
  return { enforcer: new Enforcer(resolved, telemetry, quiet), events };
}

const refusal = (id?: string) => new WsRateLimitException(rejected, 'chat', 'conn:1', id);

describe('Enforcer (no NestJS, a fake transport)', () => {
  it('answers each rejection with a frame through the transport, then closes at the threshold', () => {
    const { enforcer: subject, events } = enforcer({ violations: { max: 3, windowMs: 60_000 } });
    const socket = fakeSocket();
    const state = fakeConnection(socket);
    for (let i = 0; i < 3; i++) subject.answer(socket, state, refusal(`m${i}`));
    expect(socket.sent).toEqual(
      [1, 2, 3].map((warningCount, i) => ({
        event: 'rate_limit',
        data: {
          code: 'TYPE_LIMIT',
          messageType: 'chat',
          retryAfter: 200,
          warningCount,
          limit: 5,
          remaining: 0,
          id: `m${i}`,
        },
      })),
    );
    expect(socket.closed).toEqual({ code: 1008, reason: 'Rate limit violations', terminated: false });
    expect(state.closing).toBe(true);
    // Nothing more is sent on a closing connection.
    subject.answer(socket, state, refusal());
    expect(socket.sent).toHaveLength(3);
    expect(events.filter((event) => event.kind === 'violation')).toHaveLength(3);
    expect(events.filter((event) => event.kind === 'disconnect')).toEqual([
      { kind: 'disconnect', tracker: 'conn:1', closeCode: 1008, reason: 'Rate limit violations', enforced: true },
    ]);
  });

  it('degrades instead of closing when a cooldown is set', () => {
    const { enforcer: subject } = enforcer({ violations: { max: 2, windowMs: 60_000 }, degradeCooldownMs: 500 });
    const socket = fakeSocket();
    const state = fakeConnection(socket);
    subject.answer(socket, state, refusal());
    subject.answer(socket, state, refusal());
    expect((socket.sent[1] as { data: { code: string; retryAfter: number } }).data).toMatchObject({
      code: 'DEGRADED',
      retryAfter: 500,
    });
    expect(socket.closed).toBeUndefined();
    expect(state.degradedUntil).toBeGreaterThan(0);
  });

  it('in shadow mode counts and reports, and never sends or closes', () => {
    const { enforcer: subject, events } = enforcer({ shadow: true, violations: { max: 2, windowMs: 60_000 } });
    const socket = fakeSocket();
    const state = fakeConnection(socket);
    for (let i = 0; i < 3; i++) subject.answer(socket, state, refusal());
    expect(subject.enforced).toBe(false);
    expect(socket.sent).toEqual([]);
    expect(socket.closed).toBeUndefined();
    expect(events.filter((event) => event.kind === 'disconnect')).toHaveLength(1);
    expect(events.filter((event) => event.kind === 'violation').every((event) => !event.enforced)).toBe(true);
  });

  it('keeps a violation log the size of the window, not of the threshold', async () => {
    // A high threshold and a short window: a connection that violates now and then never
    // nears the threshold, and its log must not grow towards it.
    const { enforcer: subject } = enforcer({ shadow: true, violations: { max: 100_000, windowMs: 20 } });
    const socket = fakeSocket();
    const state = fakeConnection(socket);
    for (let round = 0; round < 30; round++) {
      for (let i = 0; i < 4; i++) subject.answer(socket, state, refusal());
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    expect(state.violations!.ring.length).toBeLessThanOrEqual(16);
  });

  it('cuts off a slow consumer instead of sending to it, with a terminate', () => {
    const { enforcer: subject } = enforcer({ maxBufferedBytes: 1024 });
    const socket = fakeSocket();
    const state = fakeConnection(socket);
    expect(subject.send(socket, state, { event: 'x' })).toBe(true);
    socket.buffered = 4096;
    expect(subject.send(socket, state, { event: 'y' })).toBe(false);
    expect(socket.sent).toEqual([{ event: 'x' }]);
    expect(socket.closed).toEqual({ code: 1008, reason: 'Slow consumer', terminated: true });
  });

  it('does not count a STORE_UNAVAILABLE refusal as a violation', () => {
    const { enforcer: subject } = enforcer({ violations: { max: 1, windowMs: 60_000 } });
    const socket = fakeSocket();
    const state = fakeConnection(socket);
    const unavailable = new WsRateLimitException({ ...rejected, storeUnavailable: true }, 'chat', 'conn:1');
    subject.answer(socket, state, unavailable);
    subject.answer(socket, state, unavailable);
    expect(socket.sent.map((frame) => (frame as { data: { code: string; warningCount: number } }).data)).toEqual([
      expect.objectContaining({ code: 'STORE_UNAVAILABLE', warningCount: 0 }),
      expect.objectContaining({ code: 'STORE_UNAVAILABLE', warningCount: 0 }),
    ]);
    expect(socket.closed).toBeUndefined();
  });
});
