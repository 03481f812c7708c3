import { afterEach, describe, expect, it } from '@jest/globals';
import { Controller, Get, Sse } from '@nestjs/common';
import { request } from 'node:http';
import { interval, map, take, type Observable } from 'rxjs';
import { WsRateLimitAdapter, WsRateLimitModule } from '../../../lib/index.js';
import { startApp, type RunningApp } from '../../support/app.js';
import { sleep } from '../../support/ws-client.js';
import { HandshakesGateway } from './handshakes.gateway.js';

/** HTTP routes of the app that shares its server with the gateway. */
@Controller()
class SlowController {
  @Get('slow')
  async slow(): Promise<string> {
    await sleep(800);
    return 'done';
  }

  @Sse('stream')
  stream(): Observable<{ data: number }> {
    return interval(150).pipe(
      take(6),
      map((n) => ({ data: n })),
    );
  }
}

/** The body of a GET, read to its end, or the error that ended it. */
function get(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const outgoing = request({ host: '127.0.0.1', port, path, agent: false }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve(body));
      response.on('error', reject);
    });
    outgoing.on('error', reject);
    outgoing.end();
  });
}

/**
 * The handshake timeout and the pending-handshake cap time the client's part of an HTTP
 * exchange only: the app's own routes on the same server may take longer to answer (a slow
 * handler, server-sent events) than `handshakeTimeoutMs`, and hold no pending slot meanwhile.
 */
describe('slow answers on the shared HTTP server', () => {
  let running: RunningApp | undefined;

  afterEach(async () => {
    await running?.close();
    running = undefined;
  });

  it('lets a handler answer after the handshake timeout, and streams outlive it', async () => {
    running = await startApp(
      {
        imports: [WsRateLimitModule.forRoot({ useEnv: false, handshakeTimeoutMs: 300, maxPendingHandshakesPerIp: 2 })],
        controllers: [SlowController],
        providers: [HandshakesGateway],
      },
      (app) => new WsRateLimitAdapter(app),
    );
    const { port } = running;
    // Four slow requests at once from one address: more than the pending cap of 2, and each
    // answered after more than twice the timeout.
    const answers = await Promise.all([
      get(port, '/slow'),
      get(port, '/slow'),
      get(port, '/slow'),
      get(port, '/stream'),
    ]);
    expect(answers.slice(0, 3)).toEqual(['done', 'done', 'done']);
    // Every event of the stream, which lasts about three times the timeout.
    expect(answers[3]!.match(/^data: \d+$/gm)).toEqual([0, 1, 2, 3, 4, 5].map((n) => `data: ${n}`));
  });
});
