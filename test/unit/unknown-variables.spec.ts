import { describe, expect, it } from '@jest/globals';
import { ENV_VARIABLES } from '../../lib/config/env-variables.js';
import { unknownVariableMessage, unknownVariables } from '../../lib/config/unknown-variables.js';

describe('unknown WS_RATE_LIMIT_* variables', () => {
  it('names a misspelled variable with the one it most likely means', () => {
    expect(unknownVariables(['WS_RATE_LIMIT_GLOBAL_CAPACTIY', 'WS_RATE_LIMIT_TRAKER', 'PATH'])).toEqual([
      { name: 'WS_RATE_LIMIT_GLOBAL_CAPACTIY', closest: 'WS_RATE_LIMIT_GLOBAL_CAPACITY' },
      { name: 'WS_RATE_LIMIT_TRAKER', closest: 'WS_RATE_LIMIT_TRACKER' },
    ]);
  });

  it('offers no guess for a name close to none', () => {
    const [unknown] = unknownVariables(['WS_RATE_LIMIT_SOMETHING_ELSE_ENTIRELY']);
    expect(unknown).toEqual({ name: 'WS_RATE_LIMIT_SOMETHING_ELSE_ENTIRELY', closest: undefined });
    expect(unknownVariableMessage(unknown!)).toBe(
      'WS_RATE_LIMIT_SOMETHING_ELSE_ENTIRELY is not a variable of nestjs-ws-rate-limit and is ignored: no option reads it',
    );
  });

  it('never reports a variable the module reads', () => {
    expect(unknownVariables(ENV_VARIABLES.map((variable) => variable.name))).toEqual([]);
  });
});
