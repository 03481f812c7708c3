/**
 * Child process: the load of the connection benchmark. Keeps `inFlight` WebSocket
 * handshakes going against the server: each lane opens a TCP connection, sends an upgrade
 * request, reads the response and, on `101`, closes the WebSocket cleanly (a close frame,
 * the server's close frame and FIN back), then starts over; on a refusal (`429`) it waits
 * for the server to close. After `warmupMs`, it counts outcomes for `durationMs`. Sends
 * `measuring` when the count starts and `result` at the end.
 *
 * The client speaks the protocol by hand (a fixed request, a fixed masked close frame)
 * rather than through the `ws` client, so that the load process spends as little CPU per
 * connection as possible and the server is what saturates.
 * Usage (from run.js): load.js <port> <inFlight> <warmupMs> <durationMs>
 */
import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { measuredWindow, sendToParent } from '../support/child.js';

/** What the load saw in the measured window. */
export interface ConnectionLoadResult {
  /** Handshakes answered `101 Switching Protocols`, per second and in all. */
  acceptedPerSecond: number;
  accepted: number;
  /** Handshakes answered `429 Too Many Requests`. */
  refusedPerSecond: number;
  refused: number;
  /** Whether the 429s carried a Retry-After header. */
  retryAfterSeen: boolean;
  /** Any other status, reset or timeout (should be 0). */
  other: number;
  errors: number;
  /** The first unexpected outcome, for the report. */
  firstProblem?: string;
  /** CPU time this process used per wall-clock second of the window (1.0 = one core). */
  loadCpuShare: number;
  /** Time from connect to the response, ms: median, p99, max; and responses slower than 200 ms. */
  responseP50Ms: number;
  responseP99Ms: number;
  responseMaxMs: number;
  slowResponses: number;
}

const [portArg, inFlightArg, warmupArg, durationArg] = process.argv.slice(2);
const port = Number(portArg);
const inFlight = Number(inFlightArg);
/** No connection may take longer than this; it is then counted as an error and dropped. */
const CONNECTION_TIMEOUT_MS = 5000;

const REQUEST = Buffer.from(
  'GET / HTTP/1.1\r\n' +
    `Host: 127.0.0.1:${port}\r\n` +
    'Upgrade: websocket\r\n' +
    'Connection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
    'Sec-WebSocket-Version: 13\r\n' +
    '\r\n',
);
/** A client close frame (masked, as clients must; the mask is zero): code 1000. */
const CLOSE_FRAME = Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);

let counting = false;
let running = true;
let accepted = 0;
let refused = 0;
let other = 0;
let errors = 0;
let retryAfterSeen = false;
let firstProblem: string | undefined;
/** Response times of the counted window (bounded). */
const responseTimes = new Float64Array(1 << 20);
let responses = 0;
/** Sockets not yet closed, destroyed when the load ends. */
const open = new Set<Socket>();

function problem(text: string): void {
  if (counting && firstProblem === undefined) firstProblem = text;
}

/** One connection: resolves when its socket has closed, whatever happened. */
function once(): Promise<void> {
  return new Promise((resolve) => {
    const startedAt = performance.now();
    const socket: Socket = connect({ host: '127.0.0.1', port });
    open.add(socket);
    let head = '';
    let answered = false;
    const timer = setTimeout(() => {
      if (counting) errors++;
      problem('a connection took longer than 5 s');
      socket.destroy();
    }, CONNECTION_TIMEOUT_MS);
    socket.setNoDelay(true);
    socket.on('connect', () => socket.write(REQUEST));
    socket.on('data', (chunk: Buffer) => {
      if (answered) return;
      head += chunk.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      answered = true;
      if (counting && responses < responseTimes.length) responseTimes[responses++] = performance.now() - startedAt;
      const status = head.slice(9, 12);
      if (status === '101') {
        if (counting) accepted++;
        socket.write(CLOSE_FRAME);
      } else if (status === '429') {
        if (counting) refused++;
        if (/\r\nRetry-After: \d+/i.test(head.slice(0, end))) retryAfterSeen = true;
      } else {
        if (counting) other++;
        problem(`unexpected response: ${head.slice(0, head.indexOf('\r\n'))}`);
        socket.destroy();
      }
    });
    socket.on('error', (error: Error) => {
      if (!answered && counting) errors++;
      problem(`socket error: ${error.message}`);
    });
    socket.on('close', () => {
      open.delete(socket);
      clearTimeout(timer);
      if (!answered && counting && !socket.errored) {
        errors++;
        problem('closed before any response');
      }
      resolve();
    });
  });
}

async function lane(): Promise<void> {
  while (running) await once();
}

const lanes = Array.from({ length: inFlight }, lane);
const { elapsedMs: elapsed, cpuMicros } = await measuredWindow(Number(warmupArg), Number(durationArg), (on) => {
  counting = on;
  if (!on) running = false;
});
const sorted = responseTimes.subarray(0, responses).sort();
const at = (share: number): number => sorted[Math.min(sorted.length - 1, Math.floor(share * sorted.length))] ?? NaN;
let slowResponses = 0;
for (let i = sorted.length - 1; i >= 0 && sorted[i]! > 200; i--) slowResponses++;
const result: ConnectionLoadResult = {
  acceptedPerSecond: (accepted / elapsed) * 1000,
  accepted,
  refusedPerSecond: (refused / elapsed) * 1000,
  refused,
  retryAfterSeen,
  other,
  errors,
  ...(firstProblem === undefined ? {} : { firstProblem }),
  loadCpuShare: cpuMicros / 1000 / elapsed,
  responseP50Ms: at(0.5),
  responseP99Ms: at(0.99),
  responseMaxMs: sorted[sorted.length - 1] ?? NaN,
  slowResponses,
};
await sendToParent('result', result);
// Connections in progress are dropped, not awaited: the server is stopped next.
for (const socket of open) socket.destroy();
await Promise.race([Promise.all(lanes), sleep(1000)]);
process.disconnect();
