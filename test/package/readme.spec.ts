import { describe, expect, it } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ENV_VARIABLES, METRICS } from '../../lib/index.js';
import { ROOT } from '../support/build.js';
import { QUICK_START } from './apps.js';

describe("the README's configuration table", () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const rows = readme
    .split('\n')
    .filter((line) => line.startsWith('| `WS_RATE_LIMIT_'))
    .map((line) =>
      line
        .split('|')
        .slice(1, -1)
        .map((cell) => cell.trim().replace(/^`(.*)`$/, '$1')),
    );

  it('lists every variable the code reads, in order, with its option and default', () => {
    expect(rows.map(([name, option, defaults]) => ({ name, option, defaults }))).toEqual(
      ENV_VARIABLES.map((variable) => ({ name: variable.name, option: variable.option, defaults: variable.default })),
    );
  });

  it('states what each variable means as the code documents it', () => {
    expect(rows.map((row) => row[3])).toEqual(ENV_VARIABLES.map((variable) => variable.description));
  });
});

describe("the README's metrics table", () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const rows = readme
    .split('\n')
    .filter((line) => line.startsWith('| `ws_rate_limit_'))
    .map((line) =>
      line
        .split('|')
        .slice(1, -1)
        .map((cell) => cell.trim()),
    );

  it('lists every metric the code publishes, with its type, labels and meaning', () => {
    expect(rows).toEqual(
      METRICS.map(([name, type, labels, help]) => [
        `\`ws_rate_limit_${name}\``,
        type,
        labels
          .split(', ')
          .filter(Boolean)
          .map((label) => `\`${label}\``)
          .join(', '),
        help,
      ]),
    );
  });
});

describe("the README's quick start", () => {
  it('is the gateway and module the package test compiles and runs in every consumer project', () => {
    expect(readFileSync(join(ROOT, 'README.md'), 'utf8')).toContain('```ts\n' + QUICK_START + '```');
  });
});
