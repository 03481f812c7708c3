/**
 * The client and a refused upgrade (HTTP 429 with `Retry-After`, `connectionRefusal: 'http'`,
 * the default): where the socket shows the answer (`ws` in Node), the reconnect waits at
 * least the `Retry-After`, and the `error` event names the refusal. Before, the client read
 * only `ws`'s "Unexpected server response: 429" and came back after `policyDelayMs`
 * (30 s by default) whatever the server had said (a block of an hour was retried every 30 s).
 *
 * Real servers on 127.0.0.1: a plain `node:http` one answering every upgrade with a status of
 * its choosing, and a NestJS app on `WsRateLimitAdapter` whose connection bucket is spent.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocket } from 'ws';
import { RateLimitedClient, type ReconnectEvent } from '../../lib/client/index.js';
import { retryAfterMs } from '../../lib/client/refused-upgrade.js';
import { WsRateLimitAdapter, WsRateLimitModule } from '../../lib/index.js';
import { startApp, type RunningApp } from '../support/app.js';

describe('retryAfterMs', () => {
  const now = Date.parse('2026-12-06T10:00:00Z');
  it.each([
    ['3600', 3_600_000],
    [' 5 ', 5000],
    [['7', '9'], 7000],
    ['Sun, 06 Dec 2026 10:01:00 GMT', 60_000],
  ] as const)('reads %j as %d ms', (header, ms) => {
    expect(retryAfterMs(header as string | string[], now)).toBe(ms);
  });
  it.each([[undefined], [''], ['0'], ['-5'], ['1.5'], ['soon'], ['Sun, 06 Dec 2026 09:59:00 GMT'], [[]]])(
    'gives nothing for %j',
    (header) => {
      expect(retryAfterMs(header as string | string[] | undefined, now)).toBeUndefined();
    },
  );
});

@WebSocketGateway()
class EchoGateway {
  @SubscribeMessage('echo')
  echo() {
    return { event: 'echo', data: 'ok' };
  }
}

describe('RateLimitedClient on a refused upgrade (ws in Node)', () => {
  const servers: Server[] = [];
  const clients: RateLimitedClient[] = [];
  let running: RunningApp | undefined;

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    for (const server of servers.splice(0)) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    await running?.close();
    running = undefined;
  });

  /** A server that answers every upgrade with `status` and these headers. */
  const refusing = async (status: number, headers: Record<string, string>): Promise<string> => {
    const server = createServer((_request, response) => response.writeHead(404).end());
    server.on('upgrade', (_request, socket) => {
      const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`);
      socket.end(`HTTP/1.1 ${status} Refused\r\nConnection: close\r\nContent-Length: 0\r\n${lines.join('')}\r\n`);
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return `ws://127.0.0.1:${(server.address() as AddressInfo).port}`;
  };

  /** Connects once and resolves the first reconnect the client schedules, with its errors. */
  const firstReconnect = async (url: string) => {
    const client = new RateLimitedClient(url, { WebSocket, policyDelayMs: 50, backoffBaseMs: 10, backoffCapMs: 20 });
    clients.push(client);
    const errors: unknown[] = [];
    client.on('error', (error) => errors.push(error));
    const reconnect = await new Promise<ReconnectEvent>((resolve) => client.once('reconnect', resolve));
    // The reconnect is not awaited: the client is closed with its timer still pending.
    client.close();
    return { reconnect, errors: errors.map((error) => (error instanceof Error ? error.message : String(error))) };
  };

  it('waits the Retry-After of a 429, and says why', async () => {
    const { reconnect, errors } = await firstReconnect(await refusing(429, { 'Retry-After': '3600' }));
    expect(reconnect.delayMs).toBeGreaterThanOrEqual(3_600_000);
    expect(reconnect.policy).toBe(true);
    expect(errors).toEqual(['RateLimitedClient: the server refused the connection: HTTP 429 (Retry-After: 3600 s)']);
  });

  it('without Retry-After waits policyDelayMs, as before', async () => {
    const { reconnect, errors } = await firstReconnect(await refusing(503, {}));
    expect(reconnect.delayMs).toBeGreaterThanOrEqual(50);
    expect(reconnect.delayMs).toBeLessThan(1000);
    expect(errors).toEqual(['RateLimitedClient: the server refused the connection: HTTP 503']);
  });

  it('an unreadable Retry-After is ignored (policyDelayMs)', async () => {
    const { reconnect } = await firstReconnect(await refusing(429, { 'Retry-After': 'later' }));
    expect(reconnect.delayMs).toBeLessThan(1000);
  });

  it("against WsRateLimitAdapter: a connection over the address's connection bucket waits the bucket's Retry-After", async () => {
    running = await startApp(
      {
        imports: [
          WsRateLimitModule.forRoot({
            useEnv: false,
            connection: { capacity: 1, refillRate: 0.01 },
            maxPendingHandshakesPerIp: 0,
          }),
        ],
        providers: [EchoGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    // The first connection spends the bucket (one token, one back every 100 s).
    const first = new WebSocket(running.url);
    await new Promise((resolve, reject) => first.once('open', resolve).once('error', reject));
    try {
      const { reconnect, errors } = await firstReconnect(running.url);
      expect(reconnect.delayMs).toBeGreaterThanOrEqual(90_000);
      expect(errors).toHaveLength(1);
      expect(errors[0]).toMatch(
        /^RateLimitedClient: the server refused the connection: HTTP 429 \(Retry-After: \d+ s\)$/,
      );
    } finally {
      first.terminate();
    }
  });
});
