import { describe, expect, it } from '@jest/globals';
import { Writable } from 'node:stream';
import type { RedisStoreClient } from '../../lib/storage/redis/client-factory.js';
import { COMMANDS_PER_WRITE, TickWrites } from '../../lib/storage/redis/tick-writes.js';

/** A socket stand-in: a real `Writable` that records the chunks of each write it makes. */
function socket(): { stream: Writable; writes: string[][] } {
  const writes: string[][] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      writes.push([chunk.toString()]);
      done();
    },
    writev(chunks, done) {
      writes.push(chunks.map(({ chunk }) => String(chunk)));
      done();
    },
  });
  return { stream, writes };
}

const clientOf = (stream: Writable, status = 'ready', isCluster = false) =>
  ({ stream, status, isCluster }) as unknown as RedisStoreClient;

const nextTick = () => new Promise<void>((resolve) => process.nextTick(resolve));

/** `TickWrites`: the store's commands of one tick go out in writes of at most 32. */
describe('TickWrites', () => {
  it('commands of one tick go out together, in order, at most 32 a write; none is held past the tick', async () => {
    const { stream, writes } = socket();
    const ticks = new TickWrites(clientOf(stream));
    for (let i = 0; i < 100; i++) {
      ticks.hold();
      stream.write(`c${i}`);
    }
    // Three full writes went as the 33rd, 65th and 97th commands came; the last 4 wait for the tick's end.
    expect(writes.map((write) => write.length)).toEqual([COMMANDS_PER_WRITE, COMMANDS_PER_WRITE, COMMANDS_PER_WRITE]);
    await nextTick();
    expect(writes.map((write) => write.length)).toEqual([
      COMMANDS_PER_WRITE,
      COMMANDS_PER_WRITE,
      COMMANDS_PER_WRITE,
      4,
    ]);
    expect(writes.flat()).toEqual(Array.from({ length: 100 }, (_, i) => `c${i}`));
    expect(stream.writableCorked).toBe(0);
    // The next tick's first command corks again.
    ticks.hold();
    stream.write('later');
    expect(stream.writableCorked).toBe(1);
    await nextTick();
    expect(writes.at(-1)).toEqual(['later']);
    expect(stream.writableCorked).toBe(0);
  });

  it('a command sent with nothing in flight goes out at once; the ones after it in its tick share writes', async () => {
    const { stream, writes } = socket();
    // ioredis's queue of commands written and not yet answered.
    const commandQueue = { length: 0 };
    const ticks = new TickWrites({
      stream,
      status: 'ready',
      isCluster: false,
      commandQueue,
    } as unknown as RedisStoreClient);
    const send = (command: string): void => {
      ticks.hold();
      stream.write(command);
      commandQueue.length++;
    };
    send('alone');
    expect(stream.writableCorked).toBe(0);
    expect(writes).toEqual([['alone']]);
    send('c1');
    send('c2');
    expect(stream.writableCorked).toBe(1);
    await nextTick();
    expect(writes).toEqual([['alone'], ['c1', 'c2']]);
    // Answered: the connection is idle again, and the next command goes at once.
    commandQueue.length = 0;
    send('next');
    expect(writes.at(-1)).toEqual(['next']);
    expect(stream.writableCorked).toBe(0);
  });

  it('leaves a client that is not ready, or a Cluster, alone: each command is its own write', async () => {
    for (const client of [
      (stream: Writable) => clientOf(stream, 'connecting'),
      (stream: Writable) => clientOf(stream, 'ready', true),
    ]) {
      const { stream, writes } = socket();
      const ticks = new TickWrites(client(stream));
      for (let i = 0; i < 3; i++) {
        ticks.hold();
        stream.write(`c${i}`);
      }
      expect(stream.writableCorked).toBe(0);
      await nextTick();
      expect(writes).toEqual([['c0'], ['c1'], ['c2']]);
    }
  });
});
