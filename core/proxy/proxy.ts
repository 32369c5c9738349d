// The proxy engine for callers (CLI, debug adapter): the relay program in a pump worker, sessions tracked on this side.
import { WorkerEngine } from '../node/workerEngine';
import type { RelayOptions } from '../node/workerProtocol';
import type { DeviceType } from '../protocol/features';

export interface ProxyOptions extends RelayOptions {
  device?: DeviceType;
  capture?: string;
}

export class Proxy extends WorkerEngine {
  constructor(readonly opts: ProxyOptions) {
    const { device, capture, ...relay } = opts;
    super('relay', relay, {
      device, capture, ringCapture: opts.notifiers && opts.ringCapture ? 'interposed' : undefined,
      captureHeader: { tool: 'vhost-lens', frontend: `${opts.frontend.mode}:${opts.frontend.path}`, backend: `${opts.backend.mode}:${opts.backend.path}`, device },
    });
  }
}
