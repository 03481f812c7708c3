/**
 * The client's retry windows keyed by the frame's `messageType` and its handling of a close
 * 1009, at their edges; bare `ws` servers on 127.0.0.1 port 0, closed at the end. From a
 * review of b8e02f8; two cases failed on it: frames without an id naming a type two events
 * share, refusing one message of each, held neither event (both were sent again 1 ms later),
 * and after a close 1009 whose too-big message had already been presumed accepted (confirmMs
 * shorter than the round trip) a small message that fits was dropped as `rejected`.
 */
import { describe, expect, it } from '@jest/globals';
import { WebSocket } from 'ws';
import {
  RateLimitedClient,
  type DropEvent,
  type RateLimitNotice,
  type ReconnectEvent,
  type UndeliveredEvent,
  type WebSocketLike,
} from '../../lib/client/index.js';
import { listen, rateLimit, sleep, stop, waitFor } from './support/ws-server.js';

describe('client: retry windows keyed by messageType', () => {
  it('holds both events when frames without an id naming their shared type refuse a message of each', async () => {
    // messageIds: false (frames carry no id). Events 'a' and 'b' share the server type 't'.
    // The server refuses both unconfirmed messages (two frames naming 't', retryAfter 1500).
    const RETRY = 1500;
    let frameAt = Number.NaN;
    const received: { event: string; at: number }[] = [];
    const { wss, url } = await listen((socket) => {
      const seen = new Set<string>();
      socket.on('message', (raw) => {
        const { event } = JSON.parse(String(raw)) as { event: string };
        received.push({ event, at: performance.now() });
        seen.add(event);
        if (Number.isNaN(frameAt) && seen.has('a') && seen.has('b')) {
          frameAt = performance.now();
          socket.send(rateLimit({ messageType: 't', retryAfter: RETRY, limit: 1 }));
          socket.send(rateLimit({ messageType: 't', retryAfter: RETRY, limit: 1 }));
        }
      });
    });
    const client = new RateLimitedClient(url, { WebSocket, messageIds: false, reconnect: false });
    const notices: RateLimitNotice[] = [];
    client.on('rateLimit', (notice) => notices.push(notice));
    client.on('error', () => undefined);
    try {
      expect(await waitFor(() => client.state === 'open')).toBe(true);
      client.send('a', 0);
      client.send('b', 0);
      expect(await waitFor(() => notices.length === 2, 5000)).toBe(true);
      // The second frame settles the group: both messages refused (and re-queued).
      expect(notices[1].messages?.map((m) => m.event).sort()).toEqual(['a', 'b']);
      await sleep(RETRY + 300);
      // The first two are the originals (sent before the frames).
      const inside = received
        .slice(2)
        .filter((r) => r.at < frameAt + RETRY - 100)
        .map((r) => `${r.event}@${Math.round(r.at - frameAt)}ms`);
      // Nothing of type 't' for 1500 ms. (The window once went to the key 't' alone, which no
      // event mapped to when a frame refused two messages: 'a' and 'b' were sent again at once.)
      expect(inside).toEqual([]);
    } finally {
      client.close();
      await stop(wss);
    }
  }, 30_000);

  it('a frame naming a wrong type for one message (hostile) holds its event only for retryAfter; a frame naming the event itself maps it back', async () => {
    const perConnection: { data: number; at: number }[] = [];
    let firstFrameAt = Number.NaN;
    const { wss, url } = await listen((socket) => {
      let count = 0;
      socket.on('message', (raw) => {
        const { data, id } = JSON.parse(String(raw)) as { data: number; id: number };
        perConnection.push({ data, at: performance.now() });
        count++;
        if (count === 1) {
          firstFrameAt = performance.now();
          socket.send(rateLimit({ messageType: 'somebody-else', retryAfter: 300, limit: 1000, id }));
        } else if (count === 2) {
          socket.send(rateLimit({ messageType: 'chat', retryAfter: 200, limit: 1000, id }));
        } else socket.send(JSON.stringify({ event: 'ack', data: { id } }));
      });
    });
    const client = new RateLimitedClient(url, {
      WebSocket,
      reconnect: false,
      isAck: (message) => {
        const { event, data } = message as { event?: string; data?: { id?: number } };
        return event === 'ack' ? { id: data?.id } : false;
      },
    });
    client.on('error', () => undefined);
    try {
      expect(await waitFor(() => client.state === 'open')).toBe(true);
      client.send('chat', 0);
      expect(await waitFor(() => perConnection.length >= 3, 10_000)).toBe(true);
      const second = perConnection[1].at - firstFrameAt;
      expect(second).toBeGreaterThanOrEqual(250);
      expect(second).toBeLessThan(2000);
      const internals = client as unknown as { eventTypes: Map<string, string> };
      expect(internals.eventTypes.has('chat')).toBe(false);
    } finally {
      client.close();
      await stop(wss);
    }
  }, 30_000);
});

describe('client: close 1009', () => {
  it("a server frame over the client's own maxPayload closes 1006 (ws never reads the echo): nothing is dropped as 'rejected'", async () => {
    const received: string[] = [];
    const { wss, url } = await listen((socket, index) => {
      socket.on('message', (raw) => {
        const { event } = JSON.parse(String(raw)) as { event: string };
        received.push(`${index}:${event}`);
        if (index === 0) socket.send(JSON.stringify({ event: 'news', data: 'x'.repeat(4096) }));
        else socket.send(JSON.stringify({ event: 'ack' }));
      });
    });
    const client = new RateLimitedClient(url, {
      createSocket: (target, protocols) =>
        new WebSocket(target, protocols, { maxPayload: 1024 }) as unknown as WebSocketLike,
      undelivered: 'requeue',
      isAck: (message) => (message as { event?: string }).event === 'ack',
      random: () => 0.5,
      backoffBaseMs: 20,
      backoffCapMs: 200,
    });
    const drops: DropEvent[] = [];
    const reconnects: ReconnectEvent[] = [];
    client.on('drop', (drop) => drops.push(drop));
    client.on('reconnect', (event) => reconnects.push(event));
    client.on('error', () => undefined);
    try {
      expect(await waitFor(() => client.state === 'open')).toBe(true);
      client.send('chat', 'small');
      expect(await waitFor(() => reconnects.length > 0, 10_000)).toBe(true);
      expect(reconnects[0].code).toBe(1006);
      expect(await waitFor(() => received.includes('1:chat'), 5000)).toBe(true);
      expect(drops).toEqual([]);
    } finally {
      client.close();
      await stop(wss);
    }
  }, 30_000);

  it('after a close 1009 whose too-big message was already presumed accepted (confirmMs passed), reports that one and keeps the message that fits', async () => {
    // The round trip is longer than confirmMs: the server's close 1009 (for the 4 KB upload)
    // arrives 300 ms after the upload, which the client presumed accepted after 50 ms. The
    // only unanswered message is the small one sent in between.
    const received: string[] = [];
    const { wss, url } = await listen((socket, index) => {
      socket.on('message', (raw) => {
        const text = String(raw);
        const { event } = JSON.parse(text) as { event: string };
        received.push(`${index}:${event}`);
        if (text.length > 1024) setTimeout(() => socket.close(1009, 'Max payload size exceeded'), 300);
      });
    });
    const client = new RateLimitedClient(url, {
      WebSocket,
      confirmMs: 50,
      undelivered: 'requeue',
      random: () => 0.5,
      backoffBaseMs: 20,
      backoffCapMs: 200,
    });
    const drops: DropEvent[] = [];
    const reports: UndeliveredEvent[] = [];
    const reconnects: ReconnectEvent[] = [];
    client.on('drop', (drop) => drops.push(drop));
    client.on('undelivered', (report) => reports.push(report));
    client.on('reconnect', (event) => reconnects.push(event));
    client.on('error', () => undefined);
    try {
      expect(await waitFor(() => client.state === 'open')).toBe(true);
      client.send('upload', 'x'.repeat(4096));
      await sleep(150);
      client.send('chat', 'small');
      expect(await waitFor(() => reconnects.length > 0, 10_000)).toBe(true);
      expect(reconnects[0].code).toBe(1009);
      await waitFor(() => received.includes('1:chat'), 3000);
      // 'chat' (it fits) is re-queued and delivered on the next connection.
      expect({
        chatDropped: drops.filter((d) => d.message.event === 'chat').map((d) => d.reason),
        chatResent: received.includes('1:chat'),
      }).toEqual({ chatDropped: [], chatResent: true });
    } finally {
      client.close();
      await stop(wss);
    }
  }, 30_000);

  it("a close 1009 with one unanswered priority message: dropped once ('rejected'), not reported undelivered, never re-sent", async () => {
    const received: string[] = [];
    const { wss, url } = await listen(
      (socket, index) => {
        socket.on('message', (raw) => {
          const { event } = JSON.parse(String(raw)) as { event: string };
          received.push(`${index}:${event}`);
          socket.send(JSON.stringify({ event: 'ack' }));
        });
      },
      { maxPayload: 1024 },
    );
    const client = new RateLimitedClient(url, {
      WebSocket,
      undelivered: 'drop',
      isAck: (message) => (message as { event?: string }).event === 'ack',
      random: () => 0.5,
      backoffBaseMs: 20,
      backoffCapMs: 200,
    });
    const drops: DropEvent[] = [];
    const reports: UndeliveredEvent[] = [];
    const reconnects: ReconnectEvent[] = [];
    client.on('drop', (drop) => drops.push(drop));
    client.on('undelivered', (report) => reports.push(report));
    client.on('reconnect', (event) => reconnects.push(event));
    client.on('error', () => undefined);
    try {
      expect(await waitFor(() => client.state === 'open')).toBe(true);
      client.sendPriority('upload', 'x'.repeat(4096));
      expect(await waitFor(() => reconnects.length > 0, 10_000)).toBe(true);
      expect(await waitFor(() => client.state === 'open', 5000)).toBe(true);
      client.send('chat', 'after');
      expect(await waitFor(() => received.includes('1:chat'), 5000)).toBe(true);
      expect(drops.map((d) => [d.reason, d.message.event])).toEqual([['rejected', 'upload']]);
      expect(reports.flatMap((r) => r.messages.map((m) => m.event))).toEqual([]);
      expect(received.filter((r) => r.endsWith('upload'))).toEqual([]);
    } finally {
      client.close();
      await stop(wss);
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------
// Sentinel watch (734118e)
// ---------------------------------------------------------------------------------------
