/**
 * Child process: the load of the gateway benchmark. Opens `clients` WebSockets to the server
 * (over `addresses` loopback source addresses, 127.0.0.1 upward), keeps `inFlight` echo
 * messages outstanding on each (a reply triggers the next send), and after `warmupMs` counts
 * echoes for `durationMs`. Sends `measuring` when the count starts and `result` at the end.
 * Usage (from run.js): load.js <url> <clients> <inFlight> <warmupMs> <durationMs> <addresses>
 */
import WebSocket from 'ws';
import { measuredWindow, sendToParent } from '../support/child.js';

/** What the load saw in the measured window. */
export interface LoadResult {
  echoesPerSecond: number;
  echoes: number;
  /** Frames that were not echoes (a `rate_limit` frame means the limits were not high enough). */
  otherFrames: number;
  /** CPU time this process used per wall-clock second of the window (1.0 = one core saturated). */
  loadCpuShare: number;
  closedEarly: number;
}

const [url, clientsArg, inFlightArg, warmupArg, durationArg, addressesArg] = process.argv.slice(2);
const clients = Number(clientsArg);
const inFlight = Number(inFlightArg);
const addresses = Number(addressesArg);

const MESSAGE = JSON.stringify({ event: 'echo', data: { n: 1, text: 'hello' } });
/** Byte 10 of a frame: `{"event":"e...` for an echo, anything else otherwise. */
const EVENT_FIRST_BYTE = 10;
const E = 'e'.charCodeAt(0);

let counting = false;
let running = true;
let echoes = 0;
let otherFrames = 0;
let closedEarly = 0;

function open(index: number): Promise<WebSocket> {
  const localAddress = `127.0.0.${(index % addresses) + 1}`;
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url!, { localAddress, perMessageDeflate: false });
    socket.once('open', () => resolve(socket));
    socket.once('error', reject);
  });
}

const sockets = await Promise.all(Array.from({ length: clients }, (_, i) => open(i)));
for (const socket of sockets) {
  socket.on('error', () => undefined);
  socket.on('close', () => {
    if (running) closedEarly++;
  });
  socket.on('message', (data: Buffer) => {
    if (counting) {
      if (data[EVENT_FIRST_BYTE] === E) echoes++;
      else otherFrames++;
    }
    if (running) socket.send(MESSAGE);
  });
}
for (const socket of sockets) for (let i = 0; i < inFlight; i++) socket.send(MESSAGE);

const { elapsedMs: elapsed, cpuMicros } = await measuredWindow(Number(warmupArg), Number(durationArg), (on) => {
  counting = on;
  if (!on) running = false;
});
const counted = echoes;

const result: LoadResult = {
  echoesPerSecond: (counted / elapsed) * 1000,
  echoes: counted,
  otherFrames,
  loadCpuShare: cpuMicros / 1000 / elapsed,
  closedEarly,
};
await sendToParent('result', result);
for (const socket of sockets) socket.close();
process.disconnect();
