import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { deflateRawSync } from 'node:zlib';
import { connect, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { buildChildApp, rssOf, startChildApp, type ChildApp } from '../../support/child-app.js';
import { ECHO_APP } from './echo-app.source.js';

const MiB = 1024 * 1024;

/**
 * Opens a WebSocket with permessage-deflate by hand and sends one compressed frame whose
 * payload is given already deflated: the test never holds the inflated data, so the
 * server's memory is all that grows. Resolves with the close code the server sends.
 */
function sendCompressed(port: number, deflated: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket: Socket = connect(port, '127.0.0.1');
    socket.on('error', reject);
    socket.on('close', () => reject(new Error('closed without a close frame')));
    let handshook = false;
    let buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      if (!handshook) {
        const end = buffer.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buffer.subarray(0, end).toString();
        if (!head.startsWith('HTTP/1.1 101')) return reject(new Error(head.split('\r\n')[0]));
        if (!/permessage-deflate/i.test(head)) return reject(new Error('deflate not negotiated'));
        handshook = true;
        buffer = buffer.subarray(end + 4);
        socket.write(frame(deflated));
      }
      // A server close frame: 0x88, length, 2-byte code.
      const at = buffer.indexOf(0x88);
      if (handshook && at >= 0 && buffer.length >= at + 4) {
        resolve(buffer.readUInt16BE(at + 2));
        socket.destroy();
      }
    });
    socket.write(
      'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
        'Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n',
    );
  });
}

/** A masked, final, compressed (RSV1) text frame. */
function frame(payload: Buffer): Buffer {
  const mask = randomBytes(4);
  const length = payload.length;
  const header =
    length < 126
      ? Buffer.from([0xc1, 0x80 | length])
      : length < 65536
        ? Buffer.from([0xc1, 0x80 | 126, length >> 8, length & 255])
        : Buffer.concat([Buffer.from([0xc1, 0x80 | 127]), bigLength(length)]);
  const masked = Buffer.alloc(length);
  for (let i = 0; i < length; i++) masked[i] = payload[i]! ^ mask[i & 3]!;
  return Buffer.concat([header, mask, masked]);
}

function bigLength(length: number): Buffer {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64BE(BigInt(length));
  return bytes;
}

describe('C-2 compression bomb (server in its own process)', () => {
  let app: ChildApp;
  // 50 MiB of zeros, deflated once (about 51 KB on the wire), trailing 4 bytes removed as
  // permessage-deflate requires.
  let bomb: Buffer;

  beforeAll(async () => {
    const zeros = Buffer.alloc(50 * MiB);
    const deflated = deflateRawSync(zeros, { level: 9 });
    bomb = deflated.subarray(0, deflated.length - 4);
    app = await startChildApp(buildChildApp(ECHO_APP), {
      WS_RATE_LIMIT_PER_MESSAGE_DEFLATE: 'true',
      WS_RATE_LIMIT_MAX_PAYLOAD: String(64 * 1024),
      WS_RATE_LIMIT_CONNECTION_CAPACITY: '1000',
      WS_RATE_LIMIT_CONNECTION_REFILL_RATE: '1000',
      WS_RATE_LIMIT_MAX_PENDING_HANDSHAKES_PER_IP: '0',
    });
  }, 120_000);

  afterAll(() => app?.stop());

  it('stops inflating at maxPayload and closes with 1009, with little memory', async () => {
    expect(bomb.length).toBeLessThan(60_000);
    const before = rssOf(app.process.pid!);
    expect(await sendCompressed(app.port, bomb)).toBe(1009);
    const growth = rssOf(app.process.pid!) - before;
    // Target: at most 8 MiB (2.6 MiB measured for ws alone).
    expect(growth).toBeLessThanOrEqual(8 * MiB);
  });

  it('keeps memory bounded under 100 parallel bombs', async () => {
    const before = rssOf(app.process.pid!);
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, rssOf(app.process.pid!))), 20);
    try {
      const codes = await Promise.all(Array.from({ length: 100 }, () => sendCompressed(app.port, bomb)));
      expect(codes.every((code) => code === 1009)).toBe(true);
    } finally {
      clearInterval(sampler);
    }
    // ws inflates at most 10 messages at a time (its zlib concurrency limit), each cut at
    // 64 KiB: the peak stays far below one inflated bomb (50 MiB).
    expect(peak - before).toBeLessThan(32 * MiB);
  }, 60_000);
});
