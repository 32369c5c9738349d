// Registry of the programs a pump worker can run (kept separate so the worker entry has no program imports).
import type { EventPump } from './pump';
import type { Native } from '../sys/native';
import type { WorkerEvent, RelayOptions } from './workerProtocol';
import type { Program } from './pumpWorker';
import { Relay } from '../proxy/relay';
import { BackendProgram, type BackendOptions } from '../backend/program';

export type ProgramName = 'relay' | 'backend';

export interface ProgramContext {
  pump: EventPump;
  native: Native;
  options: unknown;
  post: (e: WorkerEvent) => void;
}

export function createProgram(name: ProgramName, ctx: ProgramContext): Program {
  switch (name) {
    case 'relay': return new Relay(ctx.pump, ctx.native, ctx.options as RelayOptions, ctx.post);
    case 'backend': return new BackendProgram(ctx.pump, ctx.native, ctx.options as BackendOptions, ctx.post);
  }
}
