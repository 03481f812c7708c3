import { afterEach, describe, expect, it } from '@jest/globals';
import { performance } from 'node:perf_hooks';
import type { IoTestClient } from '../../support/io-client.js';
import { ENGINE_TRANSPORTS, waitFor } from '../../support/io-client.js';
import { handled } from './c35-messages.gateway.js';
import { C35Harness, timeline } from './c35-messages.harness.js';

const range = (count: number, from = 0): number[] => Array.from({ length: count }, (_, i) => from + i);

/**
 * RELIABILITY C-35: C-8 and C-30 on a socket.io gateway, both Engine.IO transports, with the
 * figures of the ws tests (test/e2e/abuse/abuse.e2e.spec.ts, test/e2e/messages/close-order.e2e.spec.ts).
 */
describe.each(ENGINE_TRANSPORTS)('C-35 close cases on socket.io over %s', (transport) => {
  const harness = new C35Harness(transport);

  afterEach(async () => {
    const { faults, loggedErrors } = await harness.stop();
    expect(faults).toEqual([]);
    expect(loggedErrors).toEqual([]);
  });

  /** Emits with an acknowledgement; the log gets `<label>:<what came back>` in arrival order. */
  const emitLogged = (client: IoTestClient, log: string[], event: string, id: string): void => {
    client.socket.timeout(20_000).emit(event, { id }, (error: Error | null, answer?: { event?: string }) => {
      log.push(`${id}:${error ? 'error' : (answer?.event ?? 'answer')}`);
    });
  };
  const freed = async () => {
    await waitFor(() => harness.stats().connections === 0, 10_000, 'state freed');
    expect(harness.stats()).toMatchObject({ connections: 0, localKeys: 0 });
  };

  describe('C-8 notice amplification', () => {
    it('10,000 refused events in a tight loop: one rate_limit per strike, then the disconnect, no echo', async () => {
      // The library's violation defaults: 10 strikes in 60 s.
      await harness.start({ global: { capacity: 2, refillRate: 0.01 } });
      const client = await harness.connect();
      const seen = timeline(client);
      for (let i = 0; i < 10_000; i++) client.socket.emit('chat', `SECRET-PAYLOAD-${i}`);
      await client.disconnected(30_000);
      expect(client.disconnectReason).toBe('io server disconnect');
      expect(seen).toEqual(['ack', 'ack', ...Array(10).fill('rate_limit'), 'rate_limit_disconnect', '#disconnect']);
      const refusals = client.of('rate_limit') as Array<Record<string, unknown>>;
      expect(refusals.map((info) => info.warningCount)).toEqual(range(10, 1));
      expect(refusals.every((info) => info.code === 'GLOBAL_LIMIT')).toBe(true);
      expect(client.of('rate_limit_disconnect')).toEqual([{ code: 1008, reason: 'Rate limit violations' }]);
      expect(JSON.stringify([refusals, client.of('rate_limit_disconnect')])).not.toContain('SECRET');
      // Nothing after the decision was decided, admitted or processed (not even the events
      // read in the same batch as the deciding one).
      expect(harness.decisions().filter((decision) => decision.allowed)).toHaveLength(2);
      expect(harness.decisions()).toHaveLength(12);
      expect(harness.ofKind('violation')).toHaveLength(10);
      expect(harness.ofKind('disconnect')).toHaveLength(1);
      expect(handled.get('chat')).toBe(2);
      await freed();
    });

    it('1,000 refused events with acknowledgements: each answered once, none hangs', async () => {
      await harness.start({ global: { capacity: 2, refillRate: 0.01 } });
      const client = await harness.connect();
      const log: string[] = [];
      client.socket.on('disconnect', () => log.push('#disconnect'));
      for (let i = 0; i < 1000; i++) emitLogged(client, log, 'ask', `SECRET-${i}`);
      await client.until(() => log.length === 1001, 30_000, 'every ack settled');
      expect(log).toEqual([
        ...range(2).map((i) => `SECRET-${i}:answer`),
        ...range(10, 2).map((i) => `SECRET-${i}:rate_limit`),
        '#disconnect',
        ...range(988, 12).map((i) => `SECRET-${i}:error`),
      ]);
      // Answered through the acks: no rate_limit event besides.
      expect(client.of('rate_limit')).toEqual([]);
      expect(client.of('rate_limit_disconnect')).toEqual([{ code: 1008, reason: 'Rate limit violations' }]);
      expect(handled.get('ask')).toBe(2);
      await freed();
    });
  });

  describe('C-30 replies survive the close', () => {
    it('45 chats back to back: 30 acks, then 10 rate_limit events, then the disconnect', async () => {
      await harness.start({ violations: { max: 10, windowMs: 60_000 } });
      const client = await harness.connect();
      const seen = timeline(client);
      for (const i of range(45)) client.socket.emit('chat', i);
      await client.disconnected();
      expect(client.disconnectReason).toBe('io server disconnect');
      expect(seen).toEqual([
        ...Array(30).fill('ack'),
        ...Array(10).fill('rate_limit'),
        'rate_limit_disconnect',
        '#disconnect',
      ]);
      expect(client.of('ack')).toEqual(range(30));
      expect((client.of('rate_limit') as Array<{ warningCount: number }>).map((info) => info.warningCount)).toEqual(
        range(10, 1),
      );
      // Replies received = events admitted, counted on the server.
      expect(harness.decisions('chat').filter((decision) => decision.allowed)).toHaveLength(30);
      expect(handled.get('chat')).toBe(30);
      await freed();
    });

    it('31 chats back to back: the 30 acks go out before the rate_limit event', async () => {
      await harness.start({ violations: { max: 10, windowMs: 60_000 } });
      const client = await harness.connect();
      const seen = timeline(client);
      for (const i of range(31)) client.socket.emit('chat', i);
      await client.until(() => client.of('rate_limit').length === 1);
      expect(seen).toEqual([...Array(30).fill('ack'), 'rate_limit']);
      expect(client.socket.connected).toBe(true);
    });

    it('waits for the replies of slow handlers admitted before the decision, and processes nothing after it', async () => {
      await harness.start({ violations: { max: 10, windowMs: 60_000 } });
      const client = await harness.connect();
      const seen = timeline(client);
      for (const i of range(3)) client.socket.emit('search', i);
      for (const i of range(15)) client.socket.emit('presence', i);
      // Within the grace, before the disconnect: a later search is not processed.
      await waitFor(() => harness.ofKind('disconnect').length === 1, 10_000, 'the close decision');
      client.socket.emit('search', 'late');
      await client.disconnected();
      // Replies are not held behind slow ones; the rate_limit events wait for the searches.
      expect(seen).toEqual([
        'presence_ack',
        'search_results',
        'search_results',
        'search_results',
        ...Array(10).fill('rate_limit'),
        'rate_limit_disconnect',
        '#disconnect',
      ]);
      expect(client.of('search_results')).toEqual(range(3));
      expect(handled.get('search')).toBe(3);
      expect(handled.get('presence')).toBe(1);
      await freed();
    });

    it('20 asks back to back: 5 answers, 10 rate_limit answers in order, the rest fail at the disconnect', async () => {
      await harness.start({ violations: { max: 10, windowMs: 60_000 } });
      const client = await harness.connect();
      const log: string[] = [];
      client.socket.onAny((event: string) => log.push(event));
      client.socket.on('disconnect', () => log.push('#disconnect'));
      for (const i of range(20)) emitLogged(client, log, 'ask', `q${i}`);
      await client.until(() => log.length === 22, 30_000, 'every ack settled');
      expect(log).toEqual([
        ...range(5).map((i) => `q${i}:answer`),
        ...range(10, 5).map((i) => `q${i}:rate_limit`),
        'rate_limit_disconnect',
        '#disconnect',
        ...range(5, 15).map((i) => `q${i}:error`),
      ]);
      expect(harness.decisions('ask').filter((decision) => decision.allowed)).toHaveLength(5);
      expect(handled.get('ask')).toBe(5);
      await freed();
    });

    it('answers slow acknowledged events before the rate_limit events queued behind them', async () => {
      await harness.start({ violations: { max: 10, windowMs: 60_000 } });
      const client = await harness.connect();
      const log: string[] = [];
      client.socket.onAny((event: string) => log.push(event));
      client.socket.on('disconnect', () => log.push('#disconnect'));
      for (const i of range(3)) emitLogged(client, log, 'slow_ask', `s${i}`);
      for (const i of range(15)) client.socket.emit('presence', i);
      await client.disconnected();
      expect(log).toEqual([
        'presence_ack',
        's0:answer',
        's1:answer',
        's2:answer',
        ...Array(10).fill('rate_limit'),
        'rate_limit_disconnect',
        '#disconnect',
      ]);
      expect(handled.get('slow_ask:settled')).toBe(3);
      await freed();
    });

    it('disconnects after the grace when an admitted handler does not answer in time', async () => {
      await harness.start({ closeGraceMs: 300, violations: { max: 10, windowMs: 60_000 } });
      const client = await harness.connect();
      const seen = timeline(client);
      const started = performance.now();
      client.socket.emit('stall', 1);
      for (const i of range(11)) client.socket.emit('presence', i);
      await client.disconnected();
      expect(performance.now() - started).toBeGreaterThanOrEqual(250);
      // The refusals were held behind the stalled event until the grace ended the wait.
      expect(seen).toEqual(['presence_ack', ...Array(10).fill('rate_limit'), 'rate_limit_disconnect', '#disconnect']);
      await freed();
    });
  });
});
