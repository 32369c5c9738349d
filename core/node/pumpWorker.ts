// Worker-thread entry: builds the native layer and event pump, runs one program (the proxy relay or a device) on it.
import { workerData, parentPort, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { FfiNative } from './ffi';
import { EventPump } from './pump';
import type { WorkerCommand, WorkerEvent, WorkerPost } from './workerProtocol';
import { createProgram, type ProgramName } from './programs';

export interface PumpWorkerData {
  program: ProgramName;
  options: unknown;
  /** eventfd owned by the host thread; written after every command. */
  doorbell: number;
  commands: MessagePort;
}

export interface Program {
  start(): void;
  command(c: WorkerCommand): void;
  stop(): void;
}

const data = workerData as PumpWorkerData;
const native = new FfiNative();
let program: Program | undefined;

/**
 * Events cross to the host thread in batches: a postMessage per relayed message would wake the host thread each
 * time and, on a small machine, preempt the relay (measured: ~40 µs per message). Message and notify events wait
 * up to BATCH_MS; any other event flushes the batch first, so order is kept.
 */
const BATCH_MS = 5;
const BATCH_MAX = 256;
let batch: WorkerEvent[] = [];
let batchTimer = 0;
function flush(): void {
  batchTimer = 0;
  if (!batch.length) return;
  const events = batch;
  batch = [];
  parentPort!.postMessage({ kind: 'batch', events } satisfies WorkerPost);
}
function post(e: WorkerEvent): void {
  if (e.kind === 'message' || e.kind === 'notify' || e.kind === 'ringcapture') {
    batch.push(e);
    if (batch.length >= BATCH_MAX) flush();
    else if (!batchTimer) batchTimer = pump.setTimer(BATCH_MS, flush);
    return;
  }
  flush();
  parentPort!.postMessage(e);
}

const pump = new EventPump(native, data.doorbell, () => {
  for (let m = receiveMessageOnPort(data.commands); m; m = receiveMessageOnPort(data.commands)) {
    const c = m.message as WorkerCommand;
    if (c.type === 'stop' && !program) pump.stop();
    else program?.command(c);
  }
});
pump.onFault = (where, e) => post({ kind: 'error', where, message: (e as Error)?.stack ?? String(e) });

try {
  program = createProgram(data.program, { pump, native, options: data.options, post });
  program.start();
  post({ kind: 'ready' });
} catch (e) {
  post({ kind: 'error', where: 'start', message: (e as Error).message });
  try { program?.stop(); } catch { /* best effort */ }
  pump.stop();
}
pump.run();
data.commands.close();
post({ kind: 'stopped', ledger: native.ledger.count, violations: native.ledger.violations });
