import { describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { WebSocket } from 'ws';
import { ensureBuilt, ROOT } from '../support/build.js';
import { cleanEnv } from './consumers.js';

/** A loopback port nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

/** The demo page's status, or undefined while nothing answers. */
async function status(url: string): Promise<number | undefined> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2_000) });
    await response.arrayBuffer();
    return response.status;
  } catch {
    return undefined;
  }
}

/**
 * nest-cli.json at the top makes `npx nest start` (NestJS's usual command) compile the
 * sample with its own tsconfig and run it. The sample imports the package by name, which
 * resolves to the built dist/esm (`npm test` builds first).
 */
describe('npx nest start', () => {
  it('serves the sample on PORT: the demo page over HTTP and a WebSocket chat', async () => {
    ensureBuilt('package');
    const port = await freePort();
    const child = spawn('npx', ['nest', 'start'], {
      cwd: ROOT,
      env: { ...cleanEnv(), PORT: String(port) },
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = once(child, 'exit');
    try {
      let answer: number | undefined;
      const deadline = Date.now() + 150_000;
      while (answer === undefined && child.exitCode === null && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        answer = await status(`http://127.0.0.1:${port}/`);
      }
      expect({ answer, output: answer === 200 ? '' : output }).toEqual({ answer: 200, output: '' });

      const socket = new WebSocket(`ws://127.0.0.1:${port}`);
      const events: string[] = [];
      const acked = new Promise<void>((resolve, reject) => {
        socket.on('message', (text) => {
          events.push((JSON.parse(text.toString()) as { event: string }).event);
          if (events.includes('ack')) resolve();
        });
        socket.once('error', reject);
      });
      await once(socket, 'open');
      socket.send(JSON.stringify({ event: 'chat', data: { content: 'hello' } }));
      await acked;
      socket.close();
      expect(events).toContain('ack');
      expect(output).toContain(`ws://localhost:${port}`);
    } finally {
      // npx, nest and the app it started are one process group: end that group only.
      if (child.exitCode === null) process.kill(-child.pid!, 'SIGTERM');
      const timer = setTimeout(() => child.exitCode === null && process.kill(-child.pid!, 'SIGKILL'), 10_000);
      timer.unref();
      await exited;
      clearTimeout(timer);
    }
  }, 200_000);
});
