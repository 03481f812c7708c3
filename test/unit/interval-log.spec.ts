import { describe, expect, it } from '@jest/globals';
import { resolveOptions } from '../../lib/config/resolve-options.js';
import { WsRateLimitException } from '../../lib/exceptions/ws-rate-limit.exception.js';
import type { RateLimitRejected } from '../../lib/interfaces/plan.interface.js';
import { IntervalLog, VIOLATION_LOG_INTERVAL_MS } from '../../lib/metrics/interval-log.js';
import { Telemetry } from '../../lib/metrics/telemetry.js';
import { Enforcer } from '../../lib/pipeline/enforcer.js';
import { fakeConnection, fakeSocket } from './support/fake-transport.js';

describe('IntervalLog', () => {
  it('writes at most one line per interval, then says how many it left out', () => {
    let now = 0;
    const lines: string[] = [];
    let built = 0;
    const log = new IntervalLog(
      1000,
      (line) => lines.push(line),
      () => now,
    );
    const make = (n: number) => () => {
      built++;
      return `line ${n}`;
    };
    log.note(make(1));
    for (let i = 2; i <= 500; i++) {
      now += 1;
      log.note(make(i));
    }
    expect(lines).toEqual(['line 1']);
    // Dropped lines are not even formatted.
    expect(built).toBe(1);
    now = 1000;
    log.note(make(501));
    log.note(make(502));
    expect(lines).toEqual(['line 1', 'line 501 (and 499 more since the previous line, not logged)']);
    now = 5000;
    log.note(make(503));
    expect(lines[2]).toBe('line 503 (and 1 more since the previous line, not logged)');
    now = 9000;
    log.note(make(504));
    expect(lines[3]).toBe('line 504');
  });
});

describe('Enforcer debug lines about violations', () => {
  const rejected: RateLimitRejected = {
    allowed: false,
    tier: 'type',
    index: 1,
    retryAfter: 200,
    limit: 5,
    remaining: 0,
  };

  it.each([
    ['shadow mode', true],
    ['enforced, many connections', false],
  ])('are bounded (%s): one line for a flood of rejections', (_name, shadow) => {
    const resolved = resolveOptions({ useEnv: false, shadow, violations: { max: 3, windowMs: 60_000 } });
    const debug: string[] = [];
    const enforcer = new Enforcer(resolved, new Telemetry(!resolved.shadow), {
      warn: () => undefined,
      debug: (line) => debug.push(line),
    });
    // 1000 rejections: one connection in shadow mode (never closed), else 334 connections closed at 3.
    const shared = fakeConnection(fakeSocket());
    for (let i = 0; i < 1000; i++) {
      const socket = fakeSocket();
      const state = shadow ? shared : fakeConnection(socket);
      enforcer.answer(socket, state, new WsRateLimitException(rejected, 'chat', `conn:${shadow ? 1 : i}`));
    }
    const violations = debug.filter((line) => line.startsWith('Violation'));
    expect(VIOLATION_LOG_INTERVAL_MS).toBeGreaterThanOrEqual(1000);
    expect(violations).toHaveLength(1);
    expect(violations[0]).toBe(
      shadow
        ? 'Violation (shadow mode, not enforced) 1/3 by conn:1 (TYPE_LIMIT, chat)'
        : 'Violation 1/3 by conn:0 (TYPE_LIMIT, chat)',
    );
  });

  it('quote a tracker or type that is not printable ASCII, so a CR or LF in it starts no line of its own', () => {
    const resolved = resolveOptions({ useEnv: false, violations: { max: 3, windowMs: 60_000 } });
    const debug: string[] = [];
    const enforcer = new Enforcer(resolved, new Telemetry(true), {
      warn: () => undefined,
      debug: (line) => debug.push(line),
    });
    const socket = fakeSocket();
    const forged = 'key:eve\n[Nest] 1 - LOG admin logged in';
    enforcer.answer(socket, fakeConnection(socket), new WsRateLimitException(rejected, 'chat\r', forged));
    expect(debug).toEqual([`Violation 1/3 by ${JSON.stringify(forged)} (TYPE_LIMIT, "chat\\r")`]);
    expect(debug.join('').includes('\n')).toBe(false);
  });
});
