import type { WsRateLimitModuleOptions } from '../interfaces/options.interface.js';

/**
 * A group of options: a plain object of named fields (`global`, `violations`, `redis`...),
 * not a function, an array, a map keyed by any string (`types`, `plans`) or an object with
 * methods (a store, a registry, a Redis client).
 */
type IsGroup<V> = [V] extends [object]
  ? V extends (...args: never[]) => unknown
    ? false
    : V extends readonly unknown[]
      ? false
      : string extends keyof V
        ? false
        : [{ [K in keyof V]-?: NonNullable<V[K]> extends (...args: never[]) => unknown ? K : never }[keyof V]] extends [
              never,
            ]
          ? true
          : false
  : false;

/** Dotted paths of the fields of `T`: a group's fields (one level deep), any other field whole. */
export type PathsOf<T> = {
  [K in keyof T & string]-?: IsGroup<NonNullable<T[K]>> extends true ? `${K}.${keyof NonNullable<T[K]> & string}` : K;
}[keyof T & string];

/** Every option path, e.g. `global.capacity`, `redis.url`, `maxPayload`. */
export type OptionPath = PathsOf<WsRateLimitModuleOptions>;

/** The type of the option at `P`, as `WsRateLimitModuleOptions` declares it (without `undefined`). */
export type OptionValue<P extends OptionPath, T = WsRateLimitModuleOptions> = P extends `${infer Head}.${infer Rest}`
  ? Head extends keyof T
    ? Rest extends keyof NonNullable<T[Head]>
      ? NonNullable<NonNullable<T[Head]>[Rest]>
      : never
    : never
  : P extends keyof T
    ? NonNullable<T[P]>
    : never;
