import { describe, expect, it } from '@jest/globals';
import { resolveOptions } from '../../lib/config/resolve-options.js';
import type { RateLimitEvent } from '../../lib/interfaces/event.interface.js';
import type { WsRateLimitModuleOptions } from '../../lib/interfaces/options.interface.js';
import { Telemetry } from '../../lib/metrics/telemetry.js';
import { MessageLimiter, UNKNOWN_PLAN_WARNINGS, UNROUTED_HANDLERS } from '../../lib/pipeline/message-limiter.js';
import { addressTracker, namedTracker, trackerOfKey, type Tracker } from '../../lib/pipeline/tracker.js';
import { createPlan } from '../../lib/plans/create-plan.js';
import { tokenBucketSpec } from '../../lib/plans/tier-specs.js';
import { SharedStore } from '../../lib/services/shared-store.js';
import { MemoryRateLimitStore } from '../../lib/storage/memory/memory-store.js';
import { fakeConnection, fakeSocket } from './support/fake-transport.js';

const noop = (): void => undefined;

function limiter(options: WsRateLimitModuleOptions = {}, warn?: (message: string) => void) {
  const resolved = resolveOptions({ useEnv: false, ...options });
  const store = new MemoryRateLimitStore();
  const shared = new SharedStore(store, resolved.failMode, resolved.maxKeys, {
    answered: noop,
    failed: noop,
    down: noop,
    up: noop,
  });
  const telemetry = new Telemetry(true);
  const events: RateLimitEvent[] = [];
  telemetry.events$.subscribe((event) => events.push(event));
  return { subject: new MessageLimiter(resolved, store, shared, telemetry, warn), store, events };
}

class Gateway {}

describe('MessageLimiter (no NestJS)', () => {
  it('keeps tracker keys byte-identical to the string prefixes stores saw before', () => {
    const state = fakeConnection(fakeSocket());
    expect(state.tracker).toEqual({ kind: 'connection', id: String(state.id), key: `conn:${state.id}` });
    expect(addressTracker('203.0.113.9').key).toBe('ip:203.0.113.9');
    expect(namedTracker('user-42').key).toBe('key:user-42');
    expect(trackerOfKey('key:user-42')).toEqual({ kind: 'name', id: 'user-42', key: 'key:user-42' });
    expect(trackerOfKey('ip:10.0.0.1').kind).toBe('address');
    expect(trackerOfKey('conn:7').kind).toBe('connection');
  });

  it('decides connection-keyed plans in process memory and named ones in the store, with their type', () => {
    const { subject, store, events } = limiter({ global: { capacity: 2, refillRate: 0.01 } });
    const state = fakeConnection(fakeSocket());
    const route = subject.routeOf(UNROUTED_HANDLERS.UNKNOWN_EVENT, Gateway)!;
    const local = subject.planFor(state, route, subject.trackerOf({}, state) as Tracker);
    expect(local).toMatchObject({ tracker: state.connectionTracker, connectionKeyed: true, type: 'unknown' });
    expect([0, 1, 2].map(() => subject.decide(local, route))).toMatchObject([
      { allowed: true },
      { allowed: true },
      { allowed: false, tier: 'global' },
    ]);
    expect(subject.local.size).toBe(1);
    expect(store.size).toBe(0);
    expect([...state.localTrackers]).toEqual([state.connectionTracker]);

    const named = subject.planFor(state, route, 'key:user-42');
    expect(named).toMatchObject({ tracker: 'key:user-42', connectionKeyed: false });
    expect(subject.decide(named, route)).toEqual({ allowed: true });
    expect(store.size).toBe(1);
    expect(events.filter((event) => event.kind === 'decision').map((event) => [event.tracker, event.type])).toEqual([
      [state.connectionTracker, 'unknown'],
      [state.connectionTracker, 'unknown'],
      [state.connectionTracker, 'unknown'],
      ['key:user-42', 'unknown'],
    ]);

    subject.forget(state);
    expect(subject.local.size).toBe(0);
    expect(state.plans.size).toBe(0);
  });

  it('reuses a plan per connection and route until the tracker changes', () => {
    const { subject } = limiter();
    const state = fakeConnection(fakeSocket());
    const route = subject.routeOf(UNROUTED_HANDLERS.INVALID_MESSAGE, Gateway)!;
    const first = subject.planFor(state, route, state.tracker);
    expect(subject.planFor(state, route, state.connectionTracker)).toBe(first);
    expect(subject.planFor(state, route, 'key:someone')).not.toBe(first);
  });

  it('places a plan built outside the limiter by its tracker, and reports it by its type tier', () => {
    const { subject, store, events } = limiter();
    const spec = tokenBucketSpec('type', 't:chat', 10, 1);
    expect(subject.decide(createPlan(store, 'ip:10.0.0.1', [spec]))).toEqual({ allowed: true });
    expect(store.size).toBe(1);
    expect(subject.decide(createPlan(subject.local, 'conn:99', [spec]))).toEqual({ allowed: true });
    expect(subject.local.size).toBe(1);
    expect(events.map((event) => (event.kind === 'decision' ? event.type : ''))).toEqual(['chat', 'chat']);
  });

  it('uses the tracker option: the connection, its address, or a name', () => {
    const state = fakeConnection(fakeSocket(), '198.51.100.4');
    expect(limiter({ tracker: 'connection' }).subject.trackerOf({}, state)).toBe(state.tracker);
    const byAddress = limiter({ tracker: 'ip' }).subject;
    expect((byAddress.trackerOf({}, state) as Tracker).key).toBe('ip:198.51.100.4');
    expect(byAddress.trackerOf({}, state)).toBe(byAddress.trackerOf({}, state));
    const byName = limiter({ tracker: (client) => (client as { user?: string }).user }).subject;
    expect((byName.trackerOf({ user: 'ann' }, state) as Tracker).key).toBe('key:ann');
    expect(byName.trackerOf({}, state)).toBe(state.tracker);
  });

  it('warns once per plan name a planResolver returns that no plan has, and gives those connections the module limits', () => {
    const warnings: string[] = [];
    let answer: unknown = 'premium';
    const { subject } = limiter(
      { plans: { free: { global: { capacity: 1, refillRate: 1 } } }, planResolver: () => answer as string },
      (message) => warnings.push(message),
    );
    const state = fakeConnection(fakeSocket());
    expect(subject.planNameOf({}, state)).toBe('default');
    expect(subject.planNameOf({}, state)).toBe('default');
    expect(warnings).toEqual([
      'planResolver returned "premium", which is not a plan (plans: free): those connections get the module\'s own limits',
    ]);
    answer = 'free';
    expect(subject.planNameOf({}, state)).toBe('free');
    // No plan (undefined, or null from JavaScript) is the module's own limits, without a word.
    for (answer of [undefined, null]) expect(subject.planNameOf({}, state)).toBe('default');
    expect(warnings).toHaveLength(1);
    // A resolver returning ever-new names (an id by mistake) is reported, then no more.
    for (let i = 0; i < 100; i++) {
      answer = `user-${i}`;
      subject.planNameOf({}, state);
    }
    expect(warnings).toHaveLength(UNKNOWN_PLAN_WARNINGS + 1);
    expect(warnings.at(-1)).toBe(
      `planResolver returned more than ${UNKNOWN_PLAN_WARNINGS} unknown plan names: no more are reported`,
    );
  });
});
