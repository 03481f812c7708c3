/** Raw Engine.IO handshakes and clients for the C-35 socket.io tests (no socket.io-client logic). */
import { request } from 'node:http';
import WebSocket from 'ws';
import type { EngineTransport, IoTestClient } from '../../support/io-client.js';
import { waitFor } from '../../support/io-client.js';

/** The HTTP answer to a raw Engine.IO handshake. */
export interface HandshakeAnswer {
  /** 200 (polling opened), 101 (WebSocket opened), or the refusal's status. */
  status: number;
  retryAfter: string | undefined;
  body: string;
}

const HANDSHAKE_PATH = (transport: EngineTransport) => `/socket.io/?EIO=4&transport=${transport}`;

/**
 * One raw Engine.IO handshake on a transport: a polling GET, or a WebSocket upgrade (the
 * socket is destroyed once upgraded, which closes that Engine.IO connection).
 */
export function rawHandshake(
  port: number,
  transport: EngineTransport,
  headers: Record<string, string> = {},
): Promise<HandshakeAnswer> {
  return new Promise((resolve, reject) => {
    const upgrade =
      transport === 'websocket'
        ? {
            Connection: 'Upgrade',
            Upgrade: 'websocket',
            'Sec-WebSocket-Version': '13',
            'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
          }
        : {};
    const req = request({
      host: '127.0.0.1',
      port,
      path: HANDSHAKE_PATH(transport),
      agent: false,
      headers: { ...upgrade, ...headers },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, retryAfter: undefined, body: '' });
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => {
        const retryAfter = res.headers['retry-after'];
        resolve({
          status: res.statusCode ?? 0,
          retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined,
          body,
        });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

/** The HTTP status a socket.io-client connect_error reports for a refused handshake. */
export function refusalStatus(error: unknown): number | undefined {
  const description = (error as { description?: unknown })?.description;
  if (typeof description === 'number') return description; // polling: the XHR status
  const message = (description as { message?: unknown } | undefined)?.message;
  const match = typeof message === 'string' ? /Unexpected server response: (\d+)/.exec(message) : null;
  return match ? Number(match[1]) : undefined; // websocket: ws's unexpected-response error
}

/** A polling request on an open Engine.IO session. */
function poll(port: number, sid: string, body?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port,
      agent: false,
      method: body === undefined ? 'GET' : 'POST',
      path: `${HANDSHAKE_PATH('polling')}&sid=${sid}`,
      headers: body === undefined ? {} : { 'Content-Type': 'text/plain;charset=UTF-8' },
    });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => (res.statusCode === 200 ? resolve(text) : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * A client that opens an Engine.IO connection, joins the main namespace (`40`), and then
 * stops answering: it never sends a pong (and, on polling, never polls again), so the
 * server's ping timeout is what ends it. It keeps no timers of its own.
 */
export async function silentClient(port: number, transport: EngineTransport): Promise<{ close(): Promise<void> }> {
  if (transport === 'polling') {
    const open = await poll0(port);
    await poll(port, open, '40');
    // The namespace's answer `40{"sid":...}` arrives on the next poll.
    const answer = await poll(port, open);
    if (!answer.includes('40{')) throw new Error(`no namespace answer: ${answer}`);
    // Keeps a long poll pending (as a real client does: a server closing a polling session
    // with none waits 30 s on a timer of its own), reading pings but never answering them.
    let stopped = false;
    const polling = (async () => {
      while (!stopped) {
        const packets = await poll(port, open).catch(() => '1');
        if (packets.split('\x1e').includes('1')) return;
      }
    })();
    return {
      close: () => {
        stopped = true;
        return polling;
      },
    };
  }
  const socket = new WebSocket(`ws://127.0.0.1:${port}${HANDSHAKE_PATH('websocket')}`);
  const messages: string[] = [];
  socket.on('message', (data: Buffer) => messages.push(data.toString()));
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    socket.once('open', () => resolve());
    socket.once('error', reject);
  });
  socket.send('40');
  await waitFor(() => messages.some((message) => message.startsWith('40{')), 10_000, 'namespace answer');
  return {
    close: async () => {
      socket.terminate();
      await new Promise<void>((resolve) =>
        socket.readyState === WebSocket.CLOSED ? resolve() : socket.once('close', () => resolve()),
      );
    },
  };
}

/** A polling handshake's session id. */
async function poll0(port: number): Promise<string> {
  const answer = await rawHandshake(port, 'polling');
  if (answer.status !== 200) throw new Error(`handshake refused: ${answer.status}`);
  return (JSON.parse(answer.body.slice(1)) as { sid: string }).sid;
}

/**
 * Closes socket.io-client sockets and waits until their Engine.IO clients are closed (a
 * polling client's close packet is a request of its own, sent after the disconnect).
 */
export async function closeClients(clients: IoTestClient[]): Promise<void> {
  for (const client of clients) client.close();
  await waitFor(
    () =>
      clients.every(
        (client) => client.socket.io.engine === undefined || client.socket.io.engine.readyState === 'closed',
      ),
    10_000,
    'clients closed',
  );
}
