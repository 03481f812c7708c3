import type { MessageId, OverflowPolicy } from './types.js';

/** A message on its way out: in the queue, or sent and awaiting confirmation. */
export interface OutboxEntry {
  /** Position in send order; the queue is kept sorted by it. */
  readonly seq: number;
  /** The message event. */
  readonly event: string;
  /** The message payload as given to `send`. */
  readonly data: unknown;
  /** The id sent with the message (`messageIds`), the same on every send of it. */
  readonly id: MessageId | undefined;
  /** The serialised frame. */
  readonly frame: string;
  /** Sent with `sendPriority`: never queued, never re-sent. */
  readonly priority: boolean;
  /** When it was last written to a socket. */
  sentAt: number;
  /** The client's count of messages sent, this one included, when it was last written. */
  sendNo: number;
  /** Times a frame refused it. */
  refusals: number;
}

/** Result of {@link Outbox.push}. */
export interface PushResult {
  /** The new entry is in the queue. */
  accepted: boolean;
  /** The entry the overflow policy discarded, if any (possibly the new one). */
  dropped?: OutboxEntry;
}

/** The bounded FIFO queue of messages waiting to be sent. */
export class Outbox {
  private readonly entries: OutboxEntry[] = [];

  constructor(
    private readonly maxSize: number,
    private readonly policy: OverflowPolicy,
  ) {}

  /** Number of queued messages. */
  get length(): number {
    return this.entries.length;
  }

  /** The next message to send. */
  peek(): OutboxEntry | undefined {
    return this.entries[0];
  }

  /** Removes the next message. */
  shift(): OutboxEntry | undefined {
    return this.entries.shift();
  }

  /** Appends a new message, applying the overflow policy when the queue is full. */
  push(entry: OutboxEntry): PushResult {
    if (this.entries.length < this.maxSize) {
      this.entries.push(entry);
      return { accepted: true };
    }
    switch (this.policy) {
      case 'drop-oldest': {
        const dropped = this.entries.shift();
        this.entries.push(entry);
        return dropped ? { accepted: true, dropped } : { accepted: false, dropped: entry };
      }
      case 'drop-newest':
        return { accepted: false, dropped: entry };
      case 'reject':
        return { accepted: false };
    }
  }

  /**
   * Puts back a message the server rejected, at its place in send order (in practice the
   * front). It is exempt from the size bound: it was accepted once already.
   */
  requeue(entry: OutboxEntry): void {
    let index = 0;
    while (index < this.entries.length && this.entries[index].seq < entry.seq) index++;
    this.entries.splice(index, 0, entry);
  }

  /** Empties the queue, returning what it held. */
  clear(): OutboxEntry[] {
    return this.entries.splice(0, this.entries.length);
  }
}
