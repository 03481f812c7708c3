import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BrowserContext } from 'playwright-core';
import { startIoSample, type RunningIoSample } from '../support/io-sample-app.js';
import { RefillClock } from '../support/refill.js';
import { CHAT_BUDGET, CHROMIUM, CHROMIUM_FLAGS, pageUntil, textOf } from './browser-support.js';

// The demo page on the socket.io sample, in Debian's Chromium (see demo-page.browser.spec.ts).
// The page uses plain socket.io-client as the server serves it: a flood is sent at once, so
// the server refuses it with rate_limit events and disconnects the page at the tenth.

const FLOOD = 60;
const CHAT_CAPACITY = 30;
/** Violations that disconnect (the sample's default). */
const VIOLATIONS = 10;

let sample: RunningIoSample | undefined;
let context: BrowserContext | undefined;
let profile: string | undefined;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install Debian's chromium (apt-get install chromium; .ci/run does)`);
  }
  const { chromium } = await import('playwright-core');
  sample = await startIoSample({}, { demoPage: true });
  profile = mkdtempSync(join(tmpdir(), 'ws-rate-limit-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1280, height: 860 },
  });
}, 120_000);

afterAll(async () => {
  await context?.close();
  await sample?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

describe('the demo page on socket.io', () => {
  it('shows a flood refused with rate_limit events, the rate_limit_disconnect reason, and the reconnection', async () => {
    const page = context!.pages()[0] ?? (await context!.newPage());
    const problems: string[] = [];
    page.on('pageerror', (error) => problems.push(String(error)));
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(message.text());
    });
    const until = (expression: string, timeout?: number): Promise<void> =>
      pageUntil(page, problems, expression, timeout);

    await page.goto(sample!.pageUrl);
    await until(`${textOf('state')} === 'open'`);
    expect(await page.evaluate('document.body.dataset.transport')).toBe('socket.io');
    expect(await page.evaluate('typeof window.io')).toBe('function'); // the client socket.io served
    await until(`${CHAT_BUDGET}?.textContent === '${CHAT_CAPACITY} / ${CHAT_CAPACITY}'`);

    await page.evaluate(`(() => {
      const seen = (window.demoSeen = { frames: [], states: [] });
      const record = (element, into) =>
        new MutationObserver(() => into.push(element.textContent)).observe(element, {
          childList: true,
          characterData: true,
          subtree: true,
        });
      record(document.getElementById('last-frame'), seen.frames);
      record(document.getElementById('state'), seen.states);
    })()`);

    const clock = new RefillClock();
    await page.click('#flood');

    // The tenth rate_limit event is followed by the notice and the server's disconnect.
    await until(`${textOf('disconnect')}.includes('then disconnect')`);
    expect(await page.textContent('#disconnect')).toBe(
      'rate_limit_disconnect {"code":1008,"reason":"Rate limit violations"}, then disconnect (io server disconnect)',
    );
    expect(await page.isVisible('#disconnect')).toBe(true);
    // The counters are drawn every 50 ms, not as events come: wait for a drawing made after
    // the disconnect (every refusal counted, every unanswered message dropped). A refusal that
    // never came, or a message neither answered nor dropped, still fails here.
    await until(
      `${textOf('refused')} === '${VIOLATIONS}' && ` +
        `Number(${textOf('dropped')}) === ${FLOOD} - Number(${textOf('delivered')}) - ${VIOLATIONS}`,
    );
    const delivered = Number(await page.textContent('#delivered'));
    // 30 burst, plus what the 15-a-second refill gave while the flood was being handled.
    expect(delivered).toBeGreaterThanOrEqual(CHAT_CAPACITY);
    expect(delivered).toBeLessThanOrEqual(CHAT_CAPACITY + clock.gained(15));
    expect(delivered).toBeLessThan(FLOOD - VIOLATIONS);
    // The rest of the flood was never answered: the server does not process events after its decision.
    expect(await page.textContent('#dropped')).toBe(String(FLOOD - delivered - VIOLATIONS));
    expect(await page.locator('#mine li[data-status="delivered"]').count()).toBe(delivered);
    expect(await page.locator('#mine li[data-status="refused"]').count()).toBe(VIOLATIONS);
    expect(await page.locator('#mine li[data-status="dropped"]').count()).toBe(FLOOD - delivered - VIOLATIONS);

    // Each rate_limit event, shown as it came, names the flood message it refused by its id.
    const seen = (await page.evaluate('window.demoSeen')) as { frames: string[]; states: string[] };
    const frames = seen.frames.map(
      (text) => JSON.parse(text) as { event: string; data: { code: string; id: number; retryAfter: number } },
    );
    expect(frames).toHaveLength(VIOLATIONS);
    // The burst's messages all went through; the refusals follow in flood order and end with
    // the last message processed. A token refilled mid-flood (a slow machine) lets one of the
    // later messages through, so the refused ids need not be contiguous.
    const refusedIds = frames.map((frame) => frame.data.id);
    expect(refusedIds[0]).toBeGreaterThan(CHAT_CAPACITY);
    expect(refusedIds.at(-1)).toBe(delivered + VIOLATIONS);
    for (let i = 1; i < refusedIds.length; i++) expect(refusedIds[i]).toBeGreaterThan(refusedIds[i - 1]!);
    for (const [i, frame] of frames.entries()) {
      expect(frame).toMatchObject({
        event: 'rate_limit',
        data: { code: 'TYPE_LIMIT', messageType: 'chat', limit: CHAT_CAPACITY, warningCount: i + 1 },
      });
      expect(frame.data.retryAfter).toBeGreaterThan(0);
    }
    expect(await page.textContent('#refused-message')).toBe(
      `Refused: chat {"content":"flood 1: ${delivered + VIOLATIONS}/${FLOOD}"} (id ${delivered + VIOLATIONS}), not sent again`,
    );

    // The other connection in the room received exactly the delivered messages, in order: the
    // burst's, then any a refilled token let through (not always the next one in line).
    await until(`${textOf('room-count')} === '${delivered}'`);
    const deliveredTexts = await page.locator('#mine li[data-status="delivered"]').allTextContents();
    expect(deliveredTexts.slice(0, CHAT_CAPACITY)).toEqual(
      Array.from({ length: CHAT_CAPACITY }, (_, i) => `flood 1: ${i + 1}/${FLOOD}`),
    );
    expect(await page.locator('#room li').allTextContents()).toEqual(deliveredTexts);

    // The page connects again (after 5 s) with a new connection and its full budget.
    await until(`${textOf('state')} === 'open' && window.demoSeen.states.includes('reconnecting')`, 30_000);
    await until(`${CHAT_BUDGET}.textContent === '${CHAT_CAPACITY} / ${CHAT_CAPACITY}'`);
    expect(problems).toEqual([]);
  }, 90_000);
});
