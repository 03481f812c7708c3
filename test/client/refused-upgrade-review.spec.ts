/**
 * Review of ed028f3: RateLimitedClient reads a refused upgrade's status and Retry-After
 * (`ws`'s `unexpected-response`, lib/client/refused-upgrade.ts) and waits at least that long.
 *
 * Checked, against real servers on 127.0.0.1 (node:http answering upgrades with raw bytes,
 * a `ws` WebSocketServer, socket.io-client's own transport):
 * - Retry-After forms: delay-seconds, IMF-fixdate, RFC 850, asctime (in a child process with
 *   TZ set, since Jest's process.env is a copy), 30 days (past 2^31-1 ms), a number past
 *   Number.MAX_VALUE, junk that V8's lenient Date.parse reads, duplicated headers.
 * - statuses 401, 503, 200, 301/302 with and without ws's followRedirects (createSocket), a
 *   redirect loop (ws's own error must pass through).
 * - a 429 whose server keeps the TCP connection open, sends the body slowly, or chunks for ever.
 * - close() from the `error` listener (alone, and followed by connect()), openTimeoutMs
 *   expiring before a late 429, maxReconnectAttempts, the attempt counter across a refusal
 *   then an accepted connection, and a Retry-After not leaking into a later close.
 * - createSocket returning a ws WebSocket; objects with an `on` that is not an EventEmitter;
 *   the socket.io factory.
 * No timed assertions: the `reconnect` event's delayMs is a computed figure.
 *
 * Failed on ed028f3 (3 cases, fixed in lib/client/refused-upgrade.ts): an asctime date was
 * read in the local time zone (6 h instead of 1 h in New York; ignored east of UTC); a
 * delay-seconds too large for a number was ignored (policyDelayMs) where 30 days waits the
 * longest delay; a socket whose `on` throws for an unknown event made connect() throw with
 * its socket left connecting.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { io } from 'socket.io-client';
import { WebSocket, WebSocketServer } from 'ws';
import {
  RateLimitedClient,
  socketIoFactory,
  type ClientState,
  type ReconnectEvent,
  type RateLimitedClientOptions,
  type WebSocketLike,
} from '../../lib/client/index.js';
import { ensureBuilt, ROOT } from '../support/build.js';
import '../support/io-settle.js';

const MAX_TIMER_MS = 2 ** 31 - 1;
const REFUSED = 'RateLimitedClient: the server refused the connection: ';

type Answer = (socket: Duplex, request: IncomingMessage) => void;

interface RawServer {
  url: string;
  port: number;
  /** Upgrade requests received. */
  upgrades: number;
  /** Resolves once every TCP connection the server accepted so far has closed. */
  allClosed(): Promise<void>;
}

const servers: Server[] = [];
const clients: RateLimitedClient[] = [];
const cleanups: (() => void)[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  for (const cleanup of cleanups.splice(0)) cleanup();
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

/** A node:http server answering every upgrade with `answer` (the n-th one gets `answers[n]` when a list). */
async function rawServer(answer: Answer | Answer[]): Promise<RawServer> {
  const server = createServer((_request, response) => response.writeHead(404).end());
  const sockets = new Set<Socket>();
  const closed: Promise<void>[] = [];
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    // The client's end: 'end' (an upgraded socket is half-open: it closes only once the server ends it too).
    closed.push(
      new Promise((resolve) => {
        socket.once('end', () => resolve());
        socket.once('close', () => resolve());
      }),
    );
  });
  cleanups.push(() => sockets.forEach((socket) => socket.destroy()));
  const state: RawServer = {
    url: '',
    port: 0,
    upgrades: 0,
    allClosed: () => Promise.all(closed).then(() => undefined),
  };
  server.on('upgrade', (request: IncomingMessage, socket: Duplex) => {
    socket.on('error', () => undefined);
    const n = state.upgrades++;
    const pick = Array.isArray(answer) ? answer[Math.min(n, answer.length - 1)] : answer;
    pick(socket, request);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = (server.address() as AddressInfo).port;
  state.url = `ws://127.0.0.1:${state.port}`;
  return state;
}

/** Answers with `status`, the header lines given, an empty body and Connection: close. */
const refuse =
  (status: number, headers: [string, string][] = []): Answer =>
  (socket) => {
    const lines = headers.map(([name, value]) => `${name}: ${value}\r\n`).join('');
    socket.end(`HTTP/1.1 ${status} Refused\r\nConnection: close\r\nContent-Length: 0\r\n${lines}\r\n`);
  };

interface Watched {
  client: RateLimitedClient;
  errors: string[];
  reconnects: ReconnectEvent[];
  states: ClientState[];
  /** Resolves the n-th (0-based) reconnect event. */
  reconnect(n?: number): Promise<ReconnectEvent>;
  /** Resolves once the client is closed. */
  closed(): Promise<void>;
}

/** An Error's message, or a ws ErrorEvent's. */
const message = (error: unknown): string =>
  typeof (error as { message?: unknown } | null)?.message === 'string'
    ? (error as { message: string }).message
    : String(error);

function watch(url: string, options: RateLimitedClientOptions = {}): Watched {
  const client = new RateLimitedClient(url, {
    WebSocket,
    policyDelayMs: 50,
    backoffBaseMs: 10,
    backoffCapMs: 20,
    ...options,
  });
  clients.push(client);
  const watched: Watched = {
    client,
    errors: [],
    reconnects: [],
    states: [],
    reconnect: (n = 0) =>
      new Promise((resolve) => {
        if (watched.reconnects.length > n) return resolve(watched.reconnects[n]);
        const off = client.on('reconnect', () => {
          if (watched.reconnects.length > n) {
            off();
            resolve(watched.reconnects[n]);
          }
        });
      }),
    closed: () =>
      new Promise((resolve) => {
        if (client.state === 'closed') return resolve();
        const off = client.on('state', (state) => {
          if (state === 'closed') {
            off();
            resolve();
          }
        });
      }),
  };
  client.on('error', (error) => watched.errors.push(message(error)));
  client.on('reconnect', (event) => watched.reconnects.push(event));
  client.on('state', (state) => watched.states.push(state));
  return watched;
}

/** A macrotask turn, a few times: lets nextTick/close/reconnect work already queued happen. */
const turns = async (n = 5): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
};

describe('Retry-After forms, through a real 429', () => {
  it('delay-seconds: waits exactly that long (the largest of back-off, policyDelayMs and it)', async () => {
    const server = await rawServer(refuse(429, [['Retry-After', '120']]));
    const w = watch(server.url);
    const event = await w.reconnect();
    expect(event).toEqual({ attempt: 0, delayMs: 120_000, code: 1006, policy: true });
    expect(w.errors).toEqual([`${REFUSED}HTTP 429 (Retry-After: 120 s)`]);
  });

  it.each([
    ['IMF-fixdate', (at: Date) => at.toUTCString()],
    [
      'RFC 850',
      (at: Date) => {
        const [day, date, month, year, time] = at.toUTCString().replace(',', '').split(' ');
        const days: Record<string, string> = {
          Mon: 'Monday',
          Tue: 'Tuesday',
          Wed: 'Wednesday',
          Thu: 'Thursday',
          Fri: 'Friday',
          Sat: 'Saturday',
          Sun: 'Sunday',
        };
        return `${days[day]}, ${date}-${month}-${year.slice(2)} ${time} GMT`;
      },
    ],
  ] as const)('an HTTP date (%s) an hour ahead waits about an hour', async (_form, format) => {
    const at = new Date(Math.ceil(Date.now() / 1000) * 1000 + 3_600_000);
    const server = await rawServer(refuse(429, [['Retry-After', format(at)]]));
    const w = watch(server.url);
    const event = await w.reconnect();
    expect(event.delayMs).toBeGreaterThan(3_500_000);
    expect(event.delayMs).toBeLessThanOrEqual(3_601_000);
    expect(w.errors).toHaveLength(1);
    expect(w.errors[0]).toMatch(
      /^RateLimitedClient: the server refused the connection: HTTP 429 \(Retry-After: 3\d{3} s\)$/,
    );
  });

  it('a date already past is ignored (policyDelayMs)', async () => {
    const server = await rawServer(refuse(429, [['Retry-After', new Date(Date.now() - 60_000).toUTCString()]]));
    const w = watch(server.url);
    expect((await w.reconnect()).delayMs).toBe(50);
    expect(w.errors).toEqual([`${REFUSED}HTTP 429`]);
  });

  it('30 days (past 2^31-1 ms) is cut to 2^31-1 ms, as the README documents for reconnect delays', async () => {
    const server = await rawServer(refuse(429, [['Retry-After', String(30 * 86_400)]]));
    const w = watch(server.url);
    expect((await w.reconnect()).delayMs).toBe(MAX_TIMER_MS);
    expect(w.errors).toEqual([`${REFUSED}HTTP 429 (Retry-After: 2592000 s)`]);
  });

  it('a delay-seconds past Number.MAX_VALUE/1000 (400 nines) waits the longest delay (2^31-1 ms) like 30 days does (it was: ignored, policyDelayMs)', async () => {
    const server = await rawServer(refuse(429, [['Retry-After', '9'.repeat(400)]]));
    const w = watch(server.url);
    const event = await w.reconnect();
    expect(w.errors[0]).toMatch(/^RateLimitedClient: the server refused the connection: HTTP 429/);
    expect(event.delayMs).toBe(MAX_TIMER_MS);
  });

  it.each([['soon'], ['1.5'], ['-5'], ['0'], ['+30'], ['12 30'], ['3600s'], ['3600, 60'], ['1 2']])(
    'junk %j is ignored: policyDelayMs, and the error names no Retry-After',
    async (value) => {
      const server = await rawServer(refuse(429, [['Retry-After', value]]));
      const w = watch(server.url);
      expect((await w.reconnect()).delayMs).toBe(50);
      expect(w.errors).toEqual([`${REFUSED}HTTP 429`]);
    },
  );

  it('a duplicated Retry-After: the first one counts (Node drops the later ones)', async () => {
    const server = await rawServer(
      refuse(429, [
        ['Retry-After', '60'],
        ['Retry-After', '3600'],
      ]),
    );
    const w = watch(server.url);
    expect((await w.reconnect()).delayMs).toBe(60_000);
    expect(w.errors).toEqual([`${REFUSED}HTTP 429 (Retry-After: 60 s)`]);
  });

  it('an asctime HTTP date (RFC 9110 says recipients MUST accept it; it is GMT) an hour ahead waits about an hour whatever the local time zone (TZ=America/New_York; it was: 6 h)', async () => {
    // Jest's process.env is a copy: TZ can only be set for a child process, which runs the
    // built package (dist/esm, what `npm test` builds first) against a real 429.
    ensureBuilt('package');
    const script = `
      import { createServer } from 'node:http';
      import { WebSocket } from 'ws';
      import { RateLimitedClient } from './dist/esm/client/index.js';
      const at = new Date(Math.ceil(Date.now() / 1000) * 1000 + 3600000);
      const [day, date, month, year, time] = at.toUTCString().replace(',', '').split(' ');
      const asctime = day + ' ' + month + ' ' + date.replace(/^0/, ' ') + ' ' + time + ' ' + year;
      const server = createServer();
      server.on('upgrade', (_request, socket) => {
        socket.end('HTTP/1.1 429 Refused\\r\\nConnection: close\\r\\nContent-Length: 0\\r\\nRetry-After: ' + asctime + '\\r\\n\\r\\n');
      });
      server.listen(0, '127.0.0.1', () => {
        const client = new RateLimitedClient('ws://127.0.0.1:' + server.address().port, {
          WebSocket, policyDelayMs: 50, backoffBaseMs: 10, backoffCapMs: 20,
        });
        const errors = [];
        client.on('error', (error) => errors.push(String(error.message ?? error)));
        client.once('reconnect', (event) => {
          client.close();
          server.close();
          process.stdout.write(JSON.stringify({ asctime, delayMs: event.delayMs, errors }));
        });
      });
    `;
    const output = await new Promise<string>((resolve, reject) => {
      execFile(
        process.execPath,
        ['--input-type=module', '-e', script],
        { cwd: ROOT, env: { ...process.env, TZ: 'America/New_York', NODE_OPTIONS: '' }, timeout: 20_000 },
        (error, stdout, stderr) => (error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(stdout)),
      );
    });
    const result = JSON.parse(output) as { asctime: string; delayMs: number; errors: string[] };
    expect(result.asctime).toMatch(/^[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}$/);
    expect(result.delayMs).toBeGreaterThan(3_500_000);
    expect(result.delayMs).toBeLessThanOrEqual(3_601_000);
  });
});

describe('statuses other than 429', () => {
  it('401: named in the error, policyDelayMs', async () => {
    const server = await rawServer(refuse(401, [['WWW-Authenticate', 'Bearer']]));
    const w = watch(server.url);
    expect(await w.reconnect()).toEqual({ attempt: 0, delayMs: 50, code: 1006, policy: true });
    expect(w.errors).toEqual([`${REFUSED}HTTP 401`]);
  });

  it('503 with Retry-After waits it', async () => {
    const server = await rawServer(refuse(503, [['Retry-After', '300']]));
    const w = watch(server.url);
    expect((await w.reconnect()).delayMs).toBe(300_000);
    expect(w.errors).toEqual([`${REFUSED}HTTP 503 (Retry-After: 300 s)`]);
  });

  it('a plain HTTP 200 page (a server that ignores the upgrade) reads as a refusal with its status', async () => {
    const server = await rawServer((socket) =>
      socket.end('HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello'),
    );
    const w = watch(server.url);
    expect((await w.reconnect()).delayMs).toBe(50);
    expect(w.errors).toEqual([`${REFUSED}HTTP 200`]);
  });

  it('301 without followRedirects: the redirect is a refusal (the target is never asked)', async () => {
    const target = await rawServer(refuse(429, [['Retry-After', '600']]));
    const server = await rawServer(refuse(301, [['Location', target.url]]));
    const w = watch(server.url);
    expect((await w.reconnect()).delayMs).toBe(50);
    expect(w.errors).toEqual([`${REFUSED}HTTP 301`]);
    expect(target.upgrades).toBe(0);
  });

  it("302 with ws's followRedirects (createSocket): the target's 429 and Retry-After count", async () => {
    const target = await rawServer(refuse(429, [['Retry-After', '600']]));
    const server = await rawServer(refuse(302, [['Location', target.url]]));
    const w = watch(server.url, {
      createSocket: (url, protocols) => new WebSocket(url, protocols, { followRedirects: true }),
    });
    expect((await w.reconnect()).delayMs).toBe(600_000);
    expect(w.errors).toEqual([`${REFUSED}HTTP 429 (Retry-After: 600 s)`]);
    expect(target.upgrades).toBe(1);
  });

  it("a redirect loop past ws's maxRedirects: ws's own error passes through, policyDelayMs", async () => {
    let self = '';
    const server = await rawServer((socket) =>
      socket.end(`HTTP/1.1 302 Found\r\nLocation: ${self}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`),
    );
    self = server.url;
    const w = watch(server.url, {
      createSocket: (url, protocols) => new WebSocket(url, protocols, { followRedirects: true, maxRedirects: 2 }),
    });
    expect((await w.reconnect()).delayMs).toBe(50);
    expect(w.errors).toEqual(['Maximum redirects exceeded']);
  });
});

describe('a 429 whose server does not end the connection', () => {
  const head = 'HTTP/1.1 429 Too Many Requests\r\nRetry-After: 120\r\n';
  it.each<[string, Answer]>([
    [
      'keeps the TCP connection open (keep-alive, empty body)',
      (socket) => socket.write(`${head}Connection: keep-alive\r\nContent-Length: 0\r\n\r\n`),
    ],
    [
      'sends a long body slowly',
      (socket) => {
        socket.write(`${head}Content-Length: 1000000\r\n\r\n`);
        const timer = setInterval(() => socket.write('x'), 20);
        socket.once('close', () => clearInterval(timer));
        cleanups.push(() => clearInterval(timer));
      },
    ],
    [
      'chunks for ever',
      (socket) => {
        socket.write(`${head}Transfer-Encoding: chunked\r\n\r\n`);
        const timer = setInterval(() => socket.write('1\r\nx\r\n'), 20);
        socket.once('close', () => clearInterval(timer));
        cleanups.push(() => clearInterval(timer));
      },
    ],
  ])('%s: the refusal is read from the head, the client ends the TCP connection', async (_what, answer) => {
    const server = await rawServer(answer);
    // No handshake deadline: only the refusal can end this attempt.
    const w = watch(server.url, { openTimeoutMs: Infinity });
    expect((await w.reconnect()).delayMs).toBe(120_000);
    expect(w.errors).toEqual([`${REFUSED}HTTP 429 (Retry-After: 120 s)`]);
    await server.allClosed();
  });
});

describe('close() and deadlines around the refusal', () => {
  it('close() from the error listener: closed, no reconnect, no further error, the TCP connection ended', async () => {
    const server = await rawServer(refuse(429, [['Retry-After', '120']]));
    const w = watch(server.url, { autoConnect: false });
    w.client.on('error', () => w.client.close());
    w.client.connect();
    await w.closed();
    await server.allClosed();
    await turns();
    expect(w.reconnects).toEqual([]);
    expect(w.errors).toEqual([`${REFUSED}HTTP 429 (Retry-After: 120 s)`]);
    expect(w.client.state).toBe('closed');
    expect(w.states).toEqual(['connecting', 'closed']);
  });

  it('close() then connect() from the error listener: the new attempt is refused and reported in turn', async () => {
    const server = await rawServer([refuse(429, [['Retry-After', '120']]), refuse(503, [['Retry-After', '7']])]);
    const w = watch(server.url, { autoConnect: false });
    let restarted = false;
    w.client.on('error', () => {
      if (restarted) return;
      restarted = true;
      w.client.close();
      w.client.connect();
    });
    w.client.connect();
    const event = await w.reconnect();
    expect(event).toEqual({ attempt: 0, delayMs: 7000, code: 1006, policy: true });
    expect(w.errors).toEqual([`${REFUSED}HTTP 429 (Retry-After: 120 s)`, `${REFUSED}HTTP 503 (Retry-After: 7 s)`]);
    expect(server.upgrades).toBe(2);
  });

  it('openTimeoutMs expiring before a late 429: one error (the deadline), one reconnect, the late answer never reported', async () => {
    const server = await rawServer((socket, request) => {
      const timer = setTimeout(() => refuse(429, [['Retry-After', '120']])(socket, request), 400);
      cleanups.push(() => clearTimeout(timer));
    });
    const w = watch(server.url, { openTimeoutMs: 50, policyDelayMs: 60_000 });
    expect(await w.reconnect()).toEqual({ attempt: 0, delayMs: 60_000, code: 1006, policy: true });
    await server.allClosed();
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(w.errors).toEqual(['RateLimitedClient: the handshake did not complete within 50 ms']);
    expect(w.reconnects).toHaveLength(1);
  });

  it('reconnect: false: the refusal is reported, then the client is closed', async () => {
    const server = await rawServer(refuse(429, [['Retry-After', '120']]));
    const w = watch(server.url, { reconnect: false });
    await w.closed();
    await turns();
    expect(w.errors).toEqual([`${REFUSED}HTTP 429 (Retry-After: 120 s)`]);
    expect(w.reconnects).toEqual([]);
  });
});

describe('reconnect counting', () => {
  it('maxReconnectAttempts: 1 with Retry-After: 1: one reconnect of 1000 ms, then it gives up after the second refusal', async () => {
    const server = await rawServer(refuse(429, [['Retry-After', '1']]));
    const w = watch(server.url, { policyDelayMs: 0, maxReconnectAttempts: 1 });
    await w.closed();
    expect(w.reconnects).toEqual([{ attempt: 0, delayMs: 1000, code: 1006, policy: true }]);
    expect(w.errors).toEqual([
      `${REFUSED}HTTP 429 (Retry-After: 1 s)`,
      `${REFUSED}HTTP 429 (Retry-After: 1 s)`,
      'RateLimitedClient: gave up after 1 reconnect attempts',
    ]);
    expect(server.upgrades).toBe(2);
  });

  it('a refusal, then an accepted connection that drops: the Retry-After does not carry over, the attempt counter does (under stableMs)', async () => {
    const wss = new WebSocketServer({ noServer: true });
    cleanups.push(() => wss.close());
    const server = await rawServer([
      refuse(429, [['Retry-After', '1']]),
      (socket, request) =>
        wss.handleUpgrade(request, socket, Buffer.alloc(0), (ws) => setTimeout(() => ws.terminate(), 20)),
      refuse(429, [['Retry-After', '120']]),
    ]);
    const w = watch(server.url, { policyDelayMs: 0 });
    const first = await w.reconnect(0);
    const second = await w.reconnect(1);
    expect(first).toEqual({ attempt: 0, delayMs: 1000, code: 1006, policy: true });
    expect(second.attempt).toBe(1);
    expect(second.policy).toBe(false);
    expect(second.code).toBe(1006);
    expect(second.delayMs).toBeLessThan(20);
    expect(w.errors).toEqual([`${REFUSED}HTTP 429 (Retry-After: 1 s)`]);
  });
});

describe('socket factories', () => {
  it('createSocket returning a ws WebSocket behaves as options.WebSocket', async () => {
    const server = await rawServer(refuse(429, [['Retry-After', '90']]));
    const a = watch(server.url);
    const b = watch(server.url, { createSocket: (url, protocols) => new WebSocket(url, protocols) });
    const [ra, rb] = await Promise.all([a.reconnect(), b.reconnect()]);
    expect(rb).toEqual(ra);
    expect(rb.delayMs).toBe(90_000);
    expect(b.errors).toEqual(a.errors);
  });

  /** ws's EventEmitter side, untyped. */
  type Emitting = { on(type: string, listener: (...args: never[]) => void): unknown };

  /** A WebSocketLike over a real ws socket, with handler properties copied through. */
  class Wrapper implements WebSocketLike {
    onopen: ((event: unknown) => void) | null = null;
    onmessage: WebSocketLike['onmessage'] = null;
    onclose: WebSocketLike['onclose'] = null;
    onerror: ((event: unknown) => void) | null = null;
    constructor(readonly inner: WebSocket) {
      inner.onopen = (event) => this.onopen?.(event);
      inner.onmessage = (event) => this.onmessage?.(event);
      inner.onclose = (event) => this.onclose?.(event);
      inner.onerror = (event) => this.onerror?.(event);
    }
    get readyState(): number {
      return this.inner.readyState;
    }
    send(data: string): void {
      this.inner.send(data);
    }
    close(code?: number, reason?: string): void {
      this.inner.close(code, reason);
    }
    terminate(): void {
      this.inner.terminate();
    }
  }

  it('an `on` that is DOM-style (addEventListener, not an EventEmitter): as a browser socket, policyDelayMs and the socket’s own error', async () => {
    class DomStyle extends Wrapper {
      on(type: string, listener: (event: unknown) => void): void {
        this.inner.addEventListener(type as 'open', listener);
      }
    }
    const server = await rawServer(refuse(429, [['Retry-After', '120']]));
    const w = watch(server.url, { createSocket: (url) => new DomStyle(new WebSocket(url)) });
    expect((await w.reconnect()).delayMs).toBe(50);
    expect(w.errors).toEqual(['Unexpected server response: 429']);
  });

  it('an `on` forwarding to the ws socket it wraps: the Retry-After is read', async () => {
    class Forwarding extends Wrapper {
      on(type: string, listener: (...args: never[]) => void): this {
        (this.inner as unknown as Emitting).on(type, listener);
        return this;
      }
    }
    const server = await rawServer(refuse(429, [['Retry-After', '120']]));
    const w = watch(server.url, { createSocket: (url) => new Forwarding(new WebSocket(url)) });
    expect((await w.reconnect()).delayMs).toBe(120_000);
    expect(w.errors).toEqual([`${REFUSED}HTTP 429 (Retry-After: 120 s)`]);
  });

  it('a socket whose `on` refuses events it does not know (a strict emitter) still connects (the Retry-After is a best-effort read; it was: connect() threw, its socket left connecting)', async () => {
    const made: WebSocket[] = [];
    class Strict extends Wrapper {
      on(type: string, listener: (...args: never[]) => void): this {
        if (!['open', 'message', 'close', 'error'].includes(type)) throw new TypeError(`unknown event ${type}`);
        (this.inner as unknown as Emitting).on(type, listener);
        return this;
      }
    }
    const wss = new WebSocketServer({ noServer: true });
    cleanups.push(() => wss.close());
    const server = await rawServer((socket, request) =>
      wss.handleUpgrade(request, socket, Buffer.alloc(0), (ws) => ws.send(JSON.stringify({ event: 'hello', data: 1 }))),
    );
    cleanups.push(() => made.forEach((socket) => socket.terminate()));
    const client = new RateLimitedClient(server.url, {
      autoConnect: false,
      createSocket: (url) => {
        const inner = new WebSocket(url);
        made.push(inner);
        return new Strict(inner);
      },
    });
    clients.push(client);
    const hello = new Promise((resolve) => client.once('message', resolve));
    let thrown: unknown;
    try {
      client.connect();
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeUndefined();
    expect(await hello).toEqual({ event: 'hello', data: 1 });
  });

  it('the socket.io factory is not affected: its connect_error (not a refusal message) and policyDelayMs', async () => {
    const server = await rawServer(refuse(429, [['Retry-After', '120']]));
    const w = watch(server.url.replace('ws:', 'http:'), {
      createSocket: socketIoFactory(io, { transports: ['websocket'] }),
    });
    expect((await w.reconnect()).delayMs).toBe(50);
    expect(w.errors).toHaveLength(1);
    expect(w.errors[0]).not.toContain('refused the connection');
    expect(server.upgrades).toBe(1);
  });
});
