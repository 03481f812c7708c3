import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { WsRateLimitModule } from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { sleep, TestClient } from '../../support/ws-client.js';
import { MessagesGateway } from './messages.gateway.js';

const acked = (client: TestClient) => client.events('ack').length;

describe('message limits over real WebSockets (memory store)', () => {
  let running: RunningApp;
  let clients: TestClient[];

  const connect = async () => {
    const client = await TestClient.connect(running.url);
    clients.push(client);
    return client;
  };

  beforeEach(async () => {
    clients = [];
    running = await startApp({
      imports: [
        WsRateLimitModule.forRoot({
          useEnv: false,
          global: { capacity: 30, refillRate: 0.1 },
          expensive: { max: 2, windowMs: 60_000 },
          violations: { max: 3, windowMs: 60_000 },
        }),
      ],
      providers: [MessagesGateway],
    });
  });

  afterEach(async () => {
    await Promise.all(clients.map((client) => client.close()));
    await running.close();
  });

  it('allows a burst of exactly the capacity, then answers TYPE_LIMIT', async () => {
    const client = await connect();
    for (let i = 0; i < 6; i++) client.send('chat', { i });
    await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 6);
    expect(acked(client)).toBe(5);
    const [frame] = client.events('rate_limit');
    expect(frame).toEqual({
      event: 'rate_limit',
      data: {
        code: 'TYPE_LIMIT',
        messageType: 'chat',
        retryAfter: expect.any(Number),
        warningCount: 1,
        limit: 5,
        remaining: 0,
      },
    });
    // One token every 10 s: the sixth message waits for (most of) one.
    expect(frame!.data.retryAfter).toBeGreaterThan(5_000);
    expect(frame!.data.retryAfter).toBeLessThanOrEqual(10_000);
    expect(Number.isInteger(frame!.data.retryAfter)).toBe(true);
  });

  it('limits expensive operations in their window', async () => {
    const client = await connect();
    for (let i = 0; i < 3; i++) client.send('search', { q: i });
    await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 3);
    expect(acked(client)).toBe(2);
    const [frame] = client.events('rate_limit');
    expect(frame!.data).toMatchObject({ code: 'EXPENSIVE_LIMIT', messageType: 'search', limit: 2, remaining: 0 });
    expect(frame!.data.retryAfter).toBeGreaterThan(50_000);
    expect(frame!.data.retryAfter).toBeLessThanOrEqual(60_000);
  });

  it('lets the same message through after retryAfter', async () => {
    const client = await connect();
    // In one read: a token refilled between them (every 100 ms) cannot let the third through.
    client.inOneWrite(() => {
      for (let i = 0; i < 3; i++) client.send('quick', { i });
    });
    await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 3);
    expect(acked(client)).toBe(2);
    const [frame] = client.events('rate_limit');
    const retryAfter = frame!.data.retryAfter as number;
    expect(retryAfter).toBeGreaterThan(0);
    expect(retryAfter).toBeLessThanOrEqual(100);
    await sleep(retryAfter);
    client.send('quick', { again: true });
    await client.waitForEvent('ack', 3);
    expect(client.events('rate_limit')).toHaveLength(1);
  });

  it('charges a weighted cost', async () => {
    const client = await connect();
    for (let i = 0; i < 3; i++) client.send('heavy', { i });
    await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 3);
    expect(acked(client)).toBe(2);
    expect(client.events('rate_limit')[0]!.data).toMatchObject({ code: 'TYPE_LIMIT', limit: 6, remaining: 0 });
  });

  it('closes with 1008 at the violation threshold and not before', async () => {
    const client = await connect();
    for (let i = 0; i < 7; i++) client.send('chat', { i });
    await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 7);
    expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual([1, 2]);
    await sleep(100);
    expect(client.socket.readyState).toBe(client.socket.OPEN);
    client.send('chat', { i: 7 });
    const closed = await client.waitClose();
    expect(closed).toEqual({ code: 1008, reason: 'Rate limit violations' });
    // The frame of the violation that reached the threshold arrived before the close.
    expect(client.events('rate_limit').map((frame) => frame.data.warningCount)).toEqual([1, 2, 3]);
  });

  it('never limits a client within its limits', async () => {
    const client = await connect();
    // quick refills 10/s: one message every 150 ms stays under it forever.
    for (let i = 0; i < 12; i++) {
      client.send('quick', { i });
      await sleep(150);
    }
    await client.waitForEvent('ack', 12);
    expect(client.events('rate_limit')).toHaveLength(0);
  });

  it('exempts @SkipThrottle handlers from every tier, the global one included', async () => {
    const client = await connect();
    for (let i = 0; i < 60; i++) client.send('ping', { i });
    await client.waitForEvent('pong', 60);
    expect(client.events('rate_limit')).toHaveLength(0);
    // The global budget (30) is untouched by the 60 pings.
    for (let i = 0; i < 5; i++) client.send('chat', { i });
    await client.waitForEvent('ack', 5);
  });

  it('keeps budgets per connection by default', async () => {
    const first = await connect();
    const second = await connect();
    for (let i = 0; i < 6; i++) first.send('chat', { i });
    await first.waitForEvent('rate_limit');
    for (let i = 0; i < 5; i++) second.send('chat', { i });
    await second.waitForEvent('ack', 5);
    expect(second.events('rate_limit')).toHaveLength(0);
  });
});

describe('the global limit across types', () => {
  it('refuses once the global bucket is empty, whichever type is sent', async () => {
    const running = await startApp({
      imports: [WsRateLimitModule.forRoot({ useEnv: false, global: { capacity: 6, refillRate: 0.1 } })],
      providers: [MessagesGateway],
    });
    const client = await TestClient.connect(running.url);
    try {
      // a and b have 4 tokens each, 8 in all; the global bucket holds 6.
      for (let i = 0; i < 4; i++) client.send('a', { i });
      for (let i = 0; i < 4; i++) client.send('b', { i });
      await client.waitFor((frame) => frame.event === 'ack' || frame.event === 'rate_limit', 8);
      expect(acked(client)).toBe(6);
      const frames = client.events('rate_limit');
      expect(frames.map((frame) => frame.data.code)).toEqual(['GLOBAL_LIMIT', 'GLOBAL_LIMIT']);
      expect(frames.map((frame) => frame.data.messageType)).toEqual(['b', 'b']);
      expect(frames[0]!.data).toMatchObject({ limit: 6, remaining: 0 });
    } finally {
      await client.close();
      await running.close();
    }
  });
});
