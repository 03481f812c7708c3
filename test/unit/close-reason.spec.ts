import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { MAX_CLOSE_REASON_BYTES, isSendableCloseCode, truncateCloseReason } from '../../lib/utils/close-reason.js';
import { check, fcParams } from './support/exact-model.js';

const bytes = (text: string): number => Buffer.byteLength(text, 'utf8');

/** Well-formed text (no lone surrogates), mixing 1-, 2-, 3- and 4-byte characters. */
const wellFormed = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 200 }),
  fc.string({ unit: 'grapheme', maxLength: 80 }),
  fc.string({ unit: fc.constantFrom('a', 'é', '€', '😀', '👩‍👧'), maxLength: 150 }),
  fc.string({ unit: 'binary-ascii', minLength: 100, maxLength: 140 }),
);

describe('C-6: truncateCloseReason', () => {
  it('gives a prefix of at most 123 UTF-8 bytes that splits no character, and the input when it fits', () => {
    fc.assert(
      fc.property(wellFormed, (reason) => {
        const cut = truncateCloseReason(reason);
        check(reason.startsWith(cut), () => 'not a prefix');
        check(bytes(cut) <= MAX_CLOSE_REASON_BYTES, () => `${bytes(cut)} bytes`);
        // A split surrogate pair would not survive the round trip through UTF-8.
        check(Buffer.from(cut, 'utf8').toString('utf8') === cut, () => 'a character was split');
        if (bytes(reason) <= MAX_CLOSE_REASON_BYTES) check(cut === reason, () => 'cut although it fitted');
        else {
          // Longest such prefix: the next code point would not have fitted.
          const next = String.fromCodePoint(reason.codePointAt(cut.length)!);
          check(bytes(cut) + bytes(next) > MAX_CLOSE_REASON_BYTES, () => 'cut shorter than needed');
        }
      }),
      fcParams(3_000),
    );
  });

  it('stays within 123 bytes for any UTF-16 text, lone surrogates included', () => {
    fc.assert(
      fc.property(
        fc.string({
          unit: fc.integer({ min: 0xd700, max: 0xe000 }).map((c) => String.fromCharCode(c)),
          maxLength: 200,
        }),
        (reason) => {
          const cut = truncateCloseReason(reason);
          check(reason.startsWith(cut) && bytes(cut) <= MAX_CLOSE_REASON_BYTES, () => `${bytes(cut)} bytes`);
        },
      ),
      fcParams(1_000),
    );
  });

  it.each([
    ['ascii exactly 123 bytes', 'a'.repeat(123), 123],
    ['ascii 124 bytes', 'a'.repeat(124), 123],
    ['2-byte characters', 'é'.repeat(100), 122],
    ['3-byte characters', '€'.repeat(100), 123],
    ['4-byte characters', '😀'.repeat(40), 120],
    ['121 ascii then an emoji', 'a'.repeat(121) + '😀', 121],
    ['empty', '', 0],
  ])('%s', (_name, reason, expectedBytes) => {
    const cut = truncateCloseReason(reason);
    expect(bytes(cut)).toBe(expectedBytes);
    expect(reason.startsWith(cut)).toBe(true);
  });
});

describe('C-6 / F-25: isSendableCloseCode against RFC 6455 section 7.4', () => {
  it.each([
    [1000, true],
    [1001, true],
    [1002, true],
    [1003, true],
    [1004, false], // reserved
    [1005, false], // "no status": never on the wire
    [1006, false], // "abnormal closure": never on the wire
    [1007, true],
    [1008, true],
    [1009, true],
    [1010, true],
    [1011, true],
    [1012, true],
    [1013, true],
    [1014, true],
    [1015, false], // TLS failure: never on the wire
    [1016, false],
    [999, false],
    [0, false],
    [-1008, false],
    [2000, false],
    [2999, false],
    [3000, true],
    [4000, true],
    [4999, true],
    [5000, false],
    [65535, false],
    [1008.5, false],
    [Number.NaN, false],
    [Number.POSITIVE_INFINITY, false],
  ])('%d -> %s', (code, sendable) => {
    expect(isSendableCloseCode(code)).toBe(sendable);
  });

  it('agrees with the RFC ranges for every integer from -10 to 70,000', () => {
    for (let code = -10; code <= 70_000; code++) {
      const rfc =
        (code >= 1000 && code <= 1014 && ![1004, 1005, 1006].includes(code)) || (code >= 3000 && code <= 4999);
      if (isSendableCloseCode(code) !== rfc) throw new Error(`code ${code}: expected ${rfc}`);
    }
  });
});
