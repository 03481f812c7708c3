import { TestEnvironment } from 'jest-environment-node';

/**
 * Jest's Node environment, plus one step before each test file's modules are torn down:
 * socket.io-client connections the file left open or closing are closed and settled
 * (test/support/io-settle.ts says why). jest-circus awaits `handleTestEvent`, and its
 * `teardown` event comes after every afterAll hook and before the module registry goes.
 */
export default class WsRateLimitEnvironment extends TestEnvironment {
  async handleTestEvent(event) {
    if (event.name !== 'teardown') return;
    const settle = this.global.__wsrlSettleIoClients;
    if (typeof settle !== 'function') return;
    const unsettled = await settle();
    if (unsettled > 0) {
      process.stderr.write(`jest-environment: ${unsettled} socket.io-client connection(s) still closing after 5 s\n`);
    }
  }
}
