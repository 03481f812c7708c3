import { createHash } from 'node:crypto';

/** A lone UTF-16 surrogate, which UTF-8 cannot carry. */
const LONE_SURROGATE = /\p{Cs}/u;
/** Starts the hashed bytes of text with lone surrogates: 0xFF never occurs in UTF-8. */
const ILL_FORMED = Buffer.from([0xff]);

/**
 * SHA-1 (base64url) of the tracker's UTF-8 bytes. UTF-8 turns every lone surrogate into
 * U+FFFD, so `'a\uD800'`, `'a\uDBFF'` and `'a\uFFFD'` would share a hash: text with a lone
 * surrogate is hashed as 0xFF and its UTF-16 code units instead, which no UTF-8 text can
 * equal. Well-formed text (every tracker the library itself builds) keeps its UTF-8 hash.
 */
export function trackerHash(tracker: string): string {
  const hash = createHash('sha1');
  if (LONE_SURROGATE.test(tracker)) hash.update(ILL_FORMED).update(tracker, 'utf16le');
  else hash.update(tracker);
  return hash.digest('base64url');
}

/** The hash tag of a key (what Redis Cluster hashes), or the whole key without one. */
export function hashTag(key: string): string {
  const open = key.indexOf('{');
  if (open >= 0) {
    const close = key.indexOf('}', open + 1);
    if (close > open + 1) return key.slice(open + 1, close);
  }
  return key;
}

/** The index of the `}` closing a key's hash tag, or -1 without one. */
function tagEnd(key: string): number {
  const open = key.indexOf('{');
  const close = open >= 0 ? key.indexOf('}', open + 1) : -1;
  return close > open + 1 ? close : -1;
}

/** The app-clock key of a tier key: same hash tag, so same Cluster slot. */
export function clockKeyOf(key: string): string {
  const close = tagEnd(key);
  return close >= 0 ? `${key.slice(0, close + 1)}:~clock` : `${key}:~clock`;
}

/**
 * The version of the key layout, named in every tracker hash's key (`...}:~4`). Layout 1
 * (before 0.2) kept each token bucket and sliding counter in a string of its own at the
 * tier key; layout 2 kept them in the hash `...}:~2` and each sliding log in a sorted set
 * at its tier key; layout 3 kept logs in the tracker hash too (`...}:~3`); layout 4 keeps
 * the same fields with every number as a little-endian double instead of text (see
 * `scripts.ts`). Keys of earlier layouts are never read and expire by their own TTLs.
 */
export const KEY_LAYOUT_VERSION = 4;

/**
 * Where a tier's state lives: the tracker hash (same hash tag as the tier key, so same
 * Cluster slot) and the field in it, the tier key's text after the tag.
 */
export function trackerHashOf(key: string): { hash: string; field: string } {
  const close = tagEnd(key);
  if (close < 0) return { hash: `${key}:~${KEY_LAYOUT_VERSION}`, field: '' };
  return { hash: `${key.slice(0, close + 1)}:~${KEY_LAYOUT_VERSION}`, field: key.slice(close + 1) };
}
