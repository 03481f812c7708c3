/**
 * errorText / valueText (lib/utils/error-text.ts): what a value application code threw says
 * in a log line, never throwing itself, whatever was thrown.
 */
import { describe, expect, it } from '@jest/globals';
import { errorText, valueText } from '../../lib/utils/error-text.js';

describe('errorText', () => {
  it("an error's message, a plain object's message, anything else as text", () => {
    expect(errorText(new TypeError('bad frame'))).toBe('bad frame');
    expect(errorText({ message: 'from a schema' })).toBe('from a schema');
    expect(errorText('a string')).toBe('a string');
    expect(errorText(42)).toBe('42');
    expect(errorText(null)).toBe('null');
    expect(errorText(undefined)).toBe('undefined');
    expect(errorText({ message: 7 })).toBe('[object Object]');
  });

  it('never throws: no prototype, a toString that throws, a revoked proxy', () => {
    const bare = Object.assign(Object.create(null) as object, { issues: ['event: required'] });
    expect(() => String(bare)).toThrow(TypeError);
    expect(errorText(bare)).toBe('[object Object]');
    const hostile = {
      toString() {
        throw new Error('no');
      },
    };
    expect(errorText(hostile)).toBe('[object Object]');
    const { proxy, revoke } = Proxy.revocable({}, {});
    revoke();
    expect(errorText(proxy)).toBe('[a value that cannot be printed]');
    expect(valueText(bare)).toBe('[object Object]');
    expect(valueText(proxy)).toBe('[a value that cannot be printed]');
    expect(valueText(Symbol('s'))).toBe('Symbol(s)');
  });
});
