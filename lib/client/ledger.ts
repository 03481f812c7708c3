// Over 400 lines: the rules that match a server's answers (acks, frames, time) to sent
// messages share one state (unconfirmed, presumed, in doubt); split, their invariants would be.
import type { OutboxEntry } from './outbox.js';
import type { MessageId } from './types.js';

/**
 * Answered or presumed-accepted messages per connection whose ids a late frame can still
 * name (the most recent ones). Unconfirmed messages are never forgotten this way: a frame
 * naming one always finds it, however many are in flight.
 */
const MAX_CONFIRMED_IDS = 1024;
/** Messages presumed accepted by time whose ack may still come (see `Ledger.presumedUnacked`). */
const MAX_PRESUMED_UNACKED = 1024;

/** UTF-8 size of a frame, in bytes (what the server's size limit counts), without encoding it. */
export function utf8Bytes(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x80) bytes += 1;
    else if (code < 0x800) bytes += 2;
    else if (code >= 0xd800 && code < 0xdc00 && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next < 0xe000) {
        // A surrogate pair: one code point of 4 bytes.
        bytes += 4;
        i++;
      } else bytes += 3; // a lone surrogate is encoded as U+FFFD
    } else bytes += 3;
  }
  return bytes;
}

/** A sent message with its frame's UTF-8 size. */
export interface Sized {
  entry: OutboxEntry;
  bytes: number;
}

/** Answers to messages of one event that could not be matched to a message yet. */
interface Doubt {
  /** `rate_limit` frames without an id. */
  refused: number;
  /** Acknowledgements without an id that arrived while a refusal was unattributed. */
  acked: number;
}

/** What an answer (or the passing of time) settled. */
export interface Settled {
  /** Messages known to be refused: each may be sent again. */
  refused: OutboxEntry[];
  /**
   * Messages answered in a way that cannot be told apart: `refused` of them were refused,
   * the others accepted, and nothing says which. None of them may be sent again.
   */
  ambiguous?: { messages: OutboxEntry[]; refused: number; acknowledged: number };
}

/** What a connection's end leaves unanswered. */
export interface Unanswered {
  /** Messages with no answer at all, or refused by a frame the client could not attribute. */
  messages: OutboxEntry[];
  /** Those among `messages` that may have been accepted: a resend could deliver them twice. */
  doubtful: Set<OutboxEntry>;
  /** Unattributed refusals among `messages`. */
  refused: number;
  /** Unattributed acknowledgements among `messages`. */
  acknowledged: number;
  /**
   * The largest message (the first of the largest to be presumed accepted) confirmed only
   * by time (presumed accepted its confirmation delay after it was sent, with no answer from
   * the server since).
   */
  presumed?: Sized;
}

const NOTHING: Settled = { refused: [] };

/**
 * Milliseconds after which an unconfirmed message of `event` is presumed accepted (the
 * client's `confirmMs`, per event). A delay may grow while messages wait; when one may have
 * shrunk, the owner calls `Ledger.rescan`.
 */
export type ConfirmDelay = (event: string) => number;

/**
 * The messages sent on one connection whose fate is unknown, and the rules that match
 * answers to them.
 *
 * An answer naming a message id is exact. Without an id, acknowledgements of one event
 * arrive in send order, so an ack confirms the oldest unconfirmed message of its event;
 * but a server may write a `rate_limit` frame before the replies of earlier messages
 * (the stock adapter does), so a frame without an id is exact only when a single message
 * of its event is unconfirmed. Otherwise it is counted as an unattributed refusal of that
 * event, and so is every later ack of the event, until the count settles it: when the
 * unattributed refusals equal the messages left, all of them were refused; when
 * refusals and acks together account for all of them, which were refused is unknowable,
 * and the whole group is reported instead of guessed at (a wrong guess would send an
 * accepted message twice).
 *
 * A message with no answer is presumed accepted once its event's confirmation delay
 * (`ConfirmDelay`) has passed since it was sent; delays differ per event (an event an ack
 * has answered gets a longer safety net than one confirmed by time alone), so messages
 * expire out of send order. A group in doubt ends as ambiguous when any of its messages
 * reaches its delay.
 */
export class Ledger {
  /** Sent messages whose fate is unknown, in send order. */
  private unconfirmed: OutboxEntry[] = [];
  /** Unconfirmed messages by id: frames may name them. */
  private readonly pendingById = new Map<MessageId, OutboxEntry>();
  /**
   * Messages confirmed (answered, presumed accepted, or reported ambiguous) by id, oldest
   * first, at most `MAX_CONFIRMED_IDS`: a late frame may still name them.
   */
  private readonly confirmedById = new Map<MessageId, OutboxEntry>();
  /** Events of the messages sent on this connection. */
  private readonly events = new Set<string>();
  /** Unattributed answers, per event ('' for frames naming no event). */
  private readonly doubts = new Map<string, Doubt>();
  /**
   * The largest message of this connection confirmed only by time (see
   * `Unanswered.presumed`): one entry, whatever the traffic.
   */
  private largestPresumed: Sized | undefined;
  /**
   * No unconfirmed message expires before this (the `sentAt` clock): the earliest deadline
   * the last look found, lowered by each message booked since. Delays only grow between
   * `rescan` calls, so it stays a lower bound, and `expire` looks at the messages only once
   * it has passed (not at every send).
   */
  private nextExpiry = Infinity;
  /**
   * Messages presumed accepted by time, in the order they were, whose acknowledgement may
   * still come (at most `MAX_PRESUMED_UNACKED`, the oldest dropped first): an ack naming
   * their event answers them before any unconfirmed message of the event. A server slower
   * than the time-based delay at its first ack (before the client knew the event is acked)
   * would otherwise have each ack confirm the message after the one it answers, and the
   * last message, never answered, counted as answered.
   */
  private presumedUnacked: OutboxEntry[] = [];
  /**
   * Messages presumed accepted by time, by their `sendNo` (the most recent
   * `MAX_CONFIRMED_IDS`): an answer naming its exact send (socket.io's acks) still finds one
   * whatever the confirmation rules, as a frame naming an id finds it in `confirmedById`.
   */
  private readonly presumedBySend = new Map<number, OutboxEntry>();

  /**
   * @param delayOf the confirmation delay of each event's messages, read at every look.
   * @param awaitsLateAck whether a message of `event` presumed accepted now may still get
   *   its ack (see `presumedUnacked`): an event not yet known to be acknowledged, presumed
   *   after the short time-based delay. A message presumed after the safety net for a lost
   *   ack is not waited for: its ack is taken as lost.
   */
  constructor(
    private readonly delayOf: ConfirmDelay,
    private readonly awaitsLateAck: (event: string) => boolean = () => false,
  ) {}

  /** Books a message just written to the socket. */
  record(entry: OutboxEntry): void {
    this.unconfirmed.push(entry);
    this.events.add(entry.event);
    if (entry.id !== undefined) this.pendingById.set(entry.id, entry);
    this.nextExpiry = Math.min(this.nextExpiry, this.deadline(entry));
  }

  /** A confirmation delay may have shrunk: the next `expire` looks at every message again. */
  rescan(): void {
    this.nextExpiry = -Infinity;
  }

  /** The event of the oldest unconfirmed message, if any. */
  oldestEvent(): string | undefined {
    return this.unconfirmed[0]?.event;
  }

  /** Whether a message of `event` was sent on this connection. */
  hasSent(event: string): boolean {
    return this.events.has(event);
  }

  /** Removes and returns the message sent on this connection with this id, confirmed or not. */
  takeById(id: MessageId): OutboxEntry | undefined {
    const entry = this.pendingById.get(id) ?? this.confirmedById.get(id);
    if (!entry) return undefined;
    // Answered by the server after all: not a message the server never read.
    if (this.largestPresumed?.entry === entry) this.largestPresumed = undefined;
    this.forgetId(entry);
    const index = this.unconfirmed.indexOf(entry);
    if (index >= 0) this.unconfirmed.splice(index, 1);
    else this.takePresumed(this.presumedUnacked.indexOf(entry));
    return entry;
  }

  /**
   * An acknowledgement without an id: of `event`, or of the oldest unconfirmed message's
   * event when the ack does not say.
   */
  ack(event: string | undefined): Settled {
    if (event !== undefined) {
      // The oldest message of the event presumed accepted before its ack came: this answers it.
      const presumed = this.presumedUnacked.findIndex((entry) => entry.event === event);
      if (presumed >= 0) {
        this.takePresumed(presumed);
        return NOTHING;
      }
    }
    const key = event ?? this.unconfirmed[0]?.event;
    if (key === undefined) return NOTHING;
    const doubt = this.doubts.get(key) ?? this.doubts.get('');
    if (!doubt) {
      // Confirmed, not forgotten: a late frame naming its id still finds it.
      const oldest = this.unconfirmed.find((entry) => entry.event === key);
      if (oldest) this.remove(oldest);
      return NOTHING;
    }
    doubt.acked++;
    return this.settle(this.doubts.get(key) ? key : '');
  }

  /** A `rate_limit` frame naming no message id, about `messageType` (any event when absent). */
  refuse(messageType: string | undefined): Settled {
    let key = messageType ?? '';
    if (key !== '' && !this.doubts.has(key) && !this.unconfirmed.some((entry) => entry.event === key)) {
      // Nothing of that event is unconfirmed: it was presumed accepted; no one else is to blame.
      if (this.events.has(key)) return NOTHING;
      // A type no message of this connection had as its event: a limit type several events
      // share (`@Throttle({ type })`), which names any of them.
      key = '';
    }
    if (key === '' && this.doubts.size > 0) key = this.doubts.keys().next().value as string;
    const doubt = this.doubts.get(key);
    const candidates = this.candidates(key);
    if (!doubt && candidates.length === 1) {
      this.forget(candidates[0]);
      return { refused: candidates };
    }
    if (candidates.length === 0) return NOTHING;
    if (doubt) doubt.refused++;
    else this.doubts.set(key, { refused: 1, acked: 0 });
    return this.settle(key);
  }

  /**
   * A refusal that answers exactly the message written as `sendNo` (socket.io's
   * acknowledgements: each message's callback, whatever order the answers come in), naming
   * no id: that message, unconfirmed or presumed accepted before its answer came.
   */
  refuseSent(sendNo: number): Settled {
    const entry = this.takeSent(sendNo);
    if (entry === undefined) return NOTHING;
    this.forgetId(entry);
    const rest = this.resettle(entry.event);
    return { ...rest, refused: [entry, ...rest.refused] };
  }

  /**
   * An acknowledgement of exactly the message written as `sendNo` (socket.io's), naming no
   * id: that message is confirmed, whatever order the answers come in. Returns it, and what
   * its group's doubt settles to once it is out of the group.
   */
  confirmSent(sendNo: number): { entry: OutboxEntry | undefined; settled: Settled } {
    const entry = this.takeSent(sendNo);
    return { entry, settled: entry === undefined ? NOTHING : this.resettle(entry.event) };
  }

  /**
   * Takes the message written as `sendNo` out of the unconfirmed ones (its id kept for late
   * frames) or the presumed ones awaiting their ack; undefined if it is in neither.
   */
  private takeSent(sendNo: number): OutboxEntry | undefined {
    const entry = this.unconfirmed.find((candidate) => candidate.sendNo === sendNo);
    if (entry !== undefined) {
      this.remove(entry);
      return entry;
    }
    const found = this.presumedBySend.get(sendNo);
    if (found === undefined || found.sendNo !== sendNo) return undefined;
    this.presumedBySend.delete(sendNo);
    this.takePresumed(this.presumedUnacked.indexOf(found));
    // Answered by the server after all: not a message the server never read.
    if (this.largestPresumed?.entry === found) this.largestPresumed = undefined;
    return found;
  }

  /** A group in doubt that lost a message to an exact answer may be settled now. */
  private resettle(event: string): Settled {
    if (this.doubts.has(event)) return this.settle(event);
    return this.doubts.has('') ? this.settle('') : NOTHING;
  }

  /**
   * Presumes accepted every message sent its event's confirmation delay ago or earlier; a
   * message in doubt that reaches its delay ends its group's doubt as ambiguous (the first
   * such message in send order: one group a call, the rest at the next call).
   */
  expire(t: number): Settled {
    if (t < this.nextExpiry) return NOTHING;
    const expired: OutboxEntry[] = [];
    let next = Infinity;
    for (const entry of this.unconfirmed) {
      const deadline = this.deadline(entry);
      if (deadline > t) {
        next = Math.min(next, deadline);
        continue;
      }
      if (this.inDoubt(entry)) {
        // The messages after it are looked at again next time.
        this.nextExpiry = -Infinity;
        return this.dropGroup(this.doubts.has(entry.event) ? entry.event : '', expired);
      }
      expired.push(entry);
    }
    this.nextExpiry = next;
    this.confirmByTime(expired);
    return NOTHING;
  }

  /** When (the `sentAt` clock) the first message in doubt reaches its delay; Infinity if none is in doubt. */
  doubtExpiry(): number {
    if (this.doubts.size === 0) return Infinity;
    let first = Infinity;
    for (const entry of this.unconfirmed) if (this.inDoubt(entry)) first = Math.min(first, this.deadline(entry));
    return first;
  }

  /** When (the `sentAt` clock) `entry`, unconfirmed, is presumed accepted. */
  deadline(entry: OutboxEntry): number {
    return entry.sentAt + this.delayOf(entry.event);
  }

  /** Unconfirmed messages of `event`: how many, and the oldest. */
  pending(event: string): { count: number; oldest: OutboxEntry | undefined } {
    let count = 0;
    let oldest: OutboxEntry | undefined;
    for (const entry of this.unconfirmed) {
      if (entry.event !== event) continue;
      count++;
      oldest ??= entry;
    }
    return { count, oldest };
  }

  /** Ends the connection: returns what is still unanswered and forgets everything. */
  drain(): Unanswered {
    const doubtful = new Set<OutboxEntry>();
    let refused = 0;
    let acknowledged = 0;
    for (const [key, doubt] of this.doubts) {
      refused += doubt.refused;
      acknowledged += doubt.acked;
      if (doubt.acked > 0) for (const entry of this.candidates(key)) doubtful.add(entry);
    }
    const messages = this.unconfirmed;
    const presumed = this.largestPresumed;
    this.clear();
    return { messages, doubtful, refused, acknowledged, ...(presumed ? { presumed } : {}) };
  }

  /** Forgets everything. */
  clear(): void {
    this.unconfirmed = [];
    this.pendingById.clear();
    this.confirmedById.clear();
    this.events.clear();
    this.doubts.clear();
    this.largestPresumed = undefined;
    this.nextExpiry = Infinity;
    this.presumedUnacked = [];
    this.presumedBySend.clear();
  }

  private takePresumed(index: number): void {
    if (index >= 0) this.presumedUnacked.splice(index, 1);
  }

  /** Whether `entry` belongs to a group answered by frames the client could not attribute. */
  private inDoubt(entry: OutboxEntry): boolean {
    return this.doubts.has(entry.event) || this.doubts.has('');
  }

  private candidates(key: string): OutboxEntry[] {
    return key === '' ? [...this.unconfirmed] : this.unconfirmed.filter((entry) => entry.event === key);
  }

  /** Settles a group once its answers account for its messages. */
  private settle(key: string): Settled {
    const doubt = this.doubts.get(key) as Doubt;
    const candidates = this.candidates(key);
    if (doubt.acked === 0 && doubt.refused >= candidates.length) {
      this.doubts.delete(key);
      for (const entry of candidates) this.forget(entry);
      return { refused: candidates };
    }
    if (doubt.acked + doubt.refused >= candidates.length) return this.dropGroup(key, []);
    return NOTHING;
  }

  /** Ends a group's doubt as ambiguous, and confirms by time the messages out of it that expired (`expired`). */
  private dropGroup(key: string, expired: OutboxEntry[]): Settled {
    const doubt = this.doubts.get(key) as Doubt;
    this.doubts.delete(key);
    this.confirmByTime(expired);
    const messages = this.candidates(key);
    for (const entry of messages) this.remove(entry);
    const refused = Math.min(doubt.refused, messages.length);
    return {
      refused: [],
      ambiguous: { messages, refused, acknowledged: Math.min(doubt.acked, messages.length - refused) },
    };
  }

  /** Refused: out of the list and of the ids (it is sent again, or dropped). */
  private forget(entry: OutboxEntry): void {
    this.forgetId(entry);
    this.remove(entry);
  }

  private forgetId(entry: OutboxEntry): void {
    if (entry.id === undefined) return;
    if (this.pendingById.get(entry.id) === entry) this.pendingById.delete(entry.id);
    if (this.confirmedById.get(entry.id) === entry) this.confirmedById.delete(entry.id);
  }

  /** Confirms an unconfirmed message: out of the list, its id kept for late frames. */
  private remove(entry: OutboxEntry): void {
    const index = this.unconfirmed.indexOf(entry);
    if (index < 0) return;
    this.unconfirmed.splice(index, 1);
    this.keepId(entry);
  }

  /**
   * Confirms unconfirmed messages by time (presumed accepted, see `remove`), remembering the
   * largest of them. `entries` are in send order, though not necessarily the oldest.
   */
  private confirmByTime(entries: OutboxEntry[]): void {
    if (entries.length === 0) return;
    if (entries.length === this.unconfirmed.length) this.unconfirmed = [];
    else {
      const gone = new Set(entries);
      this.unconfirmed = this.unconfirmed.filter((entry) => !gone.has(entry));
    }
    for (const entry of entries) {
      this.keepId(entry);
      this.notePresumed(entry);
      if (this.awaitsLateAck(entry.event)) this.presumedUnacked.push(entry);
      this.presumedBySend.set(entry.sendNo, entry);
      if (this.presumedBySend.size > MAX_CONFIRMED_IDS) {
        this.presumedBySend.delete(this.presumedBySend.keys().next().value as number);
      }
    }
    const over = this.presumedUnacked.length - MAX_PRESUMED_UNACKED;
    if (over > 0) this.presumedUnacked.splice(0, over);
  }

  /** Keeps `entry` as the largest message confirmed only by time if it is larger than the one kept. */
  private notePresumed(entry: OutboxEntry): void {
    const largest = this.largestPresumed?.bytes ?? -1;
    // A frame's UTF-8 size is at most 3 bytes per UTF-16 unit: skip the count when it cannot win.
    if (3 * entry.frame.length <= largest) return;
    const bytes = utf8Bytes(entry.frame);
    if (bytes > largest) this.largestPresumed = { entry, bytes };
  }

  /** Moves a confirmed message's id among the ones a late frame may still name. */
  private keepId(entry: OutboxEntry): void {
    if (entry.id === undefined || this.pendingById.get(entry.id) !== entry) return;
    this.pendingById.delete(entry.id);
    this.confirmedById.set(entry.id, entry);
    if (this.confirmedById.size > MAX_CONFIRMED_IDS) {
      this.confirmedById.delete(this.confirmedById.keys().next().value as MessageId);
    }
  }
}
