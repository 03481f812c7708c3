/**
 * What a thrown value says, for a log line or an error message: an error's message, else
 * the value as text. Never throws: application code may throw anything, an object without
 * a prototype (no `toString`) or one whose `toString` throws included.
 */
export function errorText(error: unknown): string {
  try {
    if (error instanceof Error) return error.message;
    const message = (error as { message?: unknown } | null | undefined)?.message;
    return typeof message === 'string' ? message : String(error);
  } catch {
    return unprintable(error);
  }
}

/** A value as text (strings as they are), never throwing. */
export function valueText(value: unknown): string {
  try {
    return String(value);
  } catch {
    return unprintable(value);
  }
}

function unprintable(value: unknown): string {
  try {
    return Object.prototype.toString.call(value);
  } catch {
    return '[a value that cannot be printed]';
  }
}
