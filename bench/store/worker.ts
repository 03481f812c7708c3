/**
 * Child process: one contender on one workload, timed round by round as the parent asks,
 * so that the rounds of all contenders interleave in time.
 * Usage (from run.js): worker.js <contender> <workload>
 *
 * Protocol: sends `ready` once prepared; then answers `{ kind: 'warm', ms }` with `warmed`
 * and `{ kind: 'round', rewarmMs, ms }` with `round` (a `Round`); exits on `{ kind: 'done' }`.
 */
import { sendToParent } from '../support/child.js';
import { DecisionTimer } from '../support/timing.js';
import { CONTENDERS, KeyOrder, WORKLOADS, type ContenderId, type WorkloadId } from './contenders.js';

const [contenderId, workloadId] = process.argv.slice(2);
const contender = CONTENDERS[contenderId as ContenderId];
const workload = WORKLOADS[workloadId as WorkloadId];
if (!contender || !workload) throw new Error(`unknown contender or workload: ${contenderId} ${workloadId}`);

const timer = new DecisionTimer(await contender.prepare(workload, new KeyOrder(workload.keys)));

interface Command {
  kind: 'warm' | 'round' | 'done';
  ms?: number;
  rewarmMs?: number;
}

// Commands are handled one at a time, in order; the parent waits for each answer.
let queue = Promise.resolve();
process.on('message', (command: Command) => {
  queue = queue.then(async () => {
    if (command.kind === 'warm') {
      await timer.warm(command.ms!);
      await sendToParent('warmed', {});
    } else if (command.kind === 'round') {
      await timer.warm(command.rewarmMs!);
      await sendToParent('round', await timer.round(command.ms!));
    } else {
      process.disconnect();
    }
  });
});
await sendToParent('ready', {});
