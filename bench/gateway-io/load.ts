/**
 * Child process: the load of the socket.io gateway benchmark, shaped as the `ws` part's:
 * opens `clients` socket.io-client sockets (WebSocket transport only, no upgrade, no
 * reconnection, one Engine.IO connection each) from `addresses` loopback source addresses,
 * keeps `inFlight` `echo` events outstanding on each (an echo received triggers the next
 * emit), and after `warmupMs` counts echoes for `durationMs`. Sends `measuring` when the count
 * starts and `result` (a `LoadResult`) at the end.
 * Usage (from run.js): load.js <url> <clients> <inFlight> <warmupMs> <durationMs> <addresses>
 */
import { io, type Socket } from 'socket.io-client';
import type { LoadResult } from '../gateway/load.js';
import { measuredWindow, sendToParent } from '../support/child.js';

const [url, clientsArg, inFlightArg, warmupArg, durationArg, addressesArg] = process.argv.slice(2);
const clients = Number(clientsArg);
const inFlight = Number(inFlightArg);
const addresses = Number(addressesArg);

/** The `ws` part's message: `{ event: 'echo', data: { n: 1, text: 'hello' } }`. */
const DATA = { n: 1, text: 'hello' };
/** Every other event the server may send: refusals, the limiter's disconnect notice, a WsException. */
const OTHER_EVENTS = ['rate_limit', 'rate_limit_disconnect', 'exception'];

let counting = false;
let running = true;
let echoes = 0;
let otherFrames = 0;
let closedEarly = 0;

/** engine.io-client passes `localAddress` (and `perMessageDeflate`) on to `ws`; its types list neither as used here. */
type LoadOptions = Parameters<typeof io>[1] & { localAddress?: string };

function open(index: number): Promise<Socket> {
  const options: LoadOptions = {
    transports: ['websocket'],
    upgrade: false,
    reconnection: false,
    forceNew: true,
    timeout: 30_000,
    // As the `ws` load: no compression offered.
    perMessageDeflate: false as unknown as { threshold: number },
    localAddress: `127.0.0.${(index % addresses) + 1}`,
  };
  return new Promise((resolve, reject) => {
    const socket = io(url!, options);
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', reject);
  });
}

const sockets = await Promise.all(Array.from({ length: clients }, (_, i) => open(i)));
for (const socket of sockets) {
  socket.on('disconnect', () => {
    if (running) closedEarly++;
  });
  // As the `ws` load, where any frame triggers the next send: a refusal keeps the window full.
  for (const event of OTHER_EVENTS) {
    socket.on(event, () => {
      if (counting) otherFrames++;
      if (running) socket.emit('echo', DATA);
    });
  }
  socket.on('echo', () => {
    if (counting) echoes++;
    if (running) socket.emit('echo', DATA);
  });
}
for (const socket of sockets) for (let i = 0; i < inFlight; i++) socket.emit('echo', DATA);

const { elapsedMs: elapsed, cpuMicros } = await measuredWindow(Number(warmupArg), Number(durationArg), (on) => {
  counting = on;
  if (!on) running = false;
});

const result: LoadResult = {
  echoesPerSecond: (echoes / elapsed) * 1000,
  echoes,
  otherFrames,
  loadCpuShare: cpuMicros / 1000 / elapsed,
  closedEarly,
};
await sendToParent('result', result);
for (const socket of sockets) socket.disconnect();
process.disconnect();
