import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BrowserContext } from 'playwright-core';
import { startSample, type RunningSample } from '../client/support/sample-app.js';
import { ROOT } from '../support/build.js';
import { CHAT_BUDGET, CHROMIUM, CHROMIUM_FLAGS, pageUntil, textOf } from './browser-support.js';

// The sample's demo page in a real browser: Debian's Chromium, headless, driven by
// playwright-core (which downloads no browser of its own), against the sample served
// in this process on a loopback port.

/** The Flood button's burst, and what the sample allows chat: 30 burst, 15 per second. */
const FLOOD = 60;
const CHAT_CAPACITY = 30;
/**
 * The README's picture is this test's screenshot. Runs write it to .tmp/ so that a test
 * run leaves the working tree clean; `UPDATE_SCREENSHOT=1 npm test` refreshes docs/demo.png.
 */
const SCREENSHOT =
  process.env.UPDATE_SCREENSHOT === '1' ? join(ROOT, 'docs', 'demo.png') : join(ROOT, '.tmp', 'demo.png');

let sample: RunningSample | undefined;
let context: BrowserContext | undefined;
let profile: string | undefined;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install Debian's chromium (apt-get install chromium; .ci/run does)`);
  }
  const { chromium } = await import('playwright-core');
  sample = await startSample({}, { demoPage: true });
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

describe('the demo page', () => {
  it('shows a flood hit the chat limit, the retry countdown, and the recovery', async () => {
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
    await until(`${CHAT_BUDGET}?.textContent === '${CHAT_CAPACITY} / ${CHAT_CAPACITY}'`);

    // Record every frame, countdown and chat budget the page shows while the test runs.
    await page.evaluate(`(() => {
      const seen = (window.demoSeen = { frames: [], refused: [], countdown: [], chat: [] });
      const record = (element, into) =>
        new MutationObserver(() => into.push(element.textContent)).observe(element, {
          childList: true,
          characterData: true,
          subtree: true,
        });
      record(document.getElementById('last-frame'), seen.frames);
      record(document.getElementById('refused-message'), seen.refused);
      record(document.getElementById('countdown'), seen.countdown);
      record(${CHAT_BUDGET}, seen.chat);
    })()`);

    await page.click('#flood');

    // The rate limit, shown with the flood message it refused.
    await until(`${textOf('refused')} !== '0'`);

    // The queue draining at the learned pace, the chat budget low: the picture for the README.
    await page.waitForTimeout(700);
    mkdirSync(join(ROOT, 'docs'), { recursive: true });
    await page.screenshot({ path: SCREENSHOT });

    // Recovery: every message delivered, the queue empty, the budget full again.
    await until(`${textOf('delivered')} === '${FLOOD}' && ${textOf('queued')} === '0'`, 30_000);
    await until(`${CHAT_BUDGET}.textContent === '${CHAT_CAPACITY} / ${CHAT_CAPACITY}'`);
    await until(`${textOf('state')} === 'open'`);

    const contents = Array.from({ length: FLOOD }, (_, i) => `flood 1: ${i + 1}/${FLOOD}`);
    // Delivered complete and in order, as another connection in the room received them.
    await until(`${textOf('room-count')} === '${FLOOD}'`);
    expect(await page.locator('#room li').allTextContents()).toEqual(contents);
    expect(await page.locator('#mine li').allTextContents()).toEqual(contents);
    expect(await page.locator('#mine li[data-status="delivered"]').count()).toBe(FLOOD);
    expect(await page.textContent('#dropped')).toBe('0');

    // One frame, the flood's own (the client keeps one chat in flight until it knows the
    // limit, and none after it learned it), naming the flood message it refused.
    const seen = (await page.evaluate('window.demoSeen')) as Record<
      'frames' | 'refused' | 'countdown' | 'chat',
      string[]
    >;
    const frames = seen.frames.map(
      (text) =>
        JSON.parse(text) as {
          event: string;
          data: { code: string; messageType: string; retryAfter: number; limit: number; id: number };
        },
    );
    expect(frames).toHaveLength(1);
    expect(await page.textContent('#refused')).toBe('1');
    for (const [i, frame] of frames.entries()) {
      expect(frame).toMatchObject({
        event: 'rate_limit',
        data: { code: 'TYPE_LIMIT', messageType: 'chat', limit: CHAT_CAPACITY, id: expect.any(Number) },
      });
      expect(frame.data.retryAfter).toBeGreaterThan(0);
      expect(seen.refused[i]).toMatch(
        new RegExp(`^Refused: chat \\{"content":"flood 1: \\d+/${FLOOD}"\\} \\(id ${frame.data.id}\\), sent again`),
      );
    }

    // The countdown of retryAfter, down to the end of the window.
    const longest = Math.max(...frames.map((frame) => frame.data.retryAfter));
    const counting = seen.countdown
      .map((text) => /^retry in (\d+) ms$/.exec(text))
      .filter((match): match is RegExpExecArray => match !== null)
      .map((match) => Number(match[1]));
    expect(counting.length).toBeGreaterThan(0);
    for (const left of counting) {
      expect(left).toBeGreaterThan(0);
      expect(left).toBeLessThanOrEqual(longest);
    }
    expect(seen.countdown.at(-1)).toBe(
      `retry window of ${frames.at(-1)!.data.retryAfter} ms over: the queue drains, paced`,
    );

    // The chat budget: spent by the flood, then full again.
    const chatBudget = seen.chat.map((text) => Number(text.split(' / ')[0]));
    expect(Math.min(...chatBudget)).toBeLessThan(CHAT_CAPACITY / 3);
    expect(seen.chat.at(-1)).toBe(`${CHAT_CAPACITY} / ${CHAT_CAPACITY}`);

    expect(problems).toEqual([]);
    expect(existsSync(SCREENSHOT)).toBe(true);
  }, 90_000);
});
