import type { Page } from 'playwright-core';

/** Debian's package `chromium` (`.ci/run` installs it when missing). */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
];

/** Waits until a script expression, evaluated in the page, is true; on a timeout, says what the page showed. */
export async function pageUntil(page: Page, problems: string[], expression: string, timeout = 20_000): Promise<void> {
  try {
    await page.waitForFunction(expression, undefined, { timeout, polling: 25 });
  } catch (error) {
    const shown = await page
      .evaluate(
        `['state', 'sent', 'queued', 'delivered', 'refused', 'dropped', 'room-count', 'disconnect', 'log']
        .map((id) => id + ': ' + document.getElementById(id)?.innerText).join('\\n')`,
      )
      .catch(() => 'nothing');
    throw new Error(
      `waiting for ${expression}: ${String(error)}\nthe page showed:\n${String(shown)}\n` +
        `errors in the page: ${JSON.stringify(problems)}`,
      { cause: error },
    );
  }
}

/** A script expression: the text of the element with this id. */
export const textOf = (id: string): string => `document.getElementById(${JSON.stringify(id)}).textContent`;
/** A script expression: the chat row of the budgets table. */
export const CHAT_BUDGET = `document.querySelector('#budgets tr[data-tier="chat"] .value')`;
