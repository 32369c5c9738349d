// The built-in back-end engine for callers (CLI, debug adapter): a device worker plus the same session tracking as the proxy.
import { WorkerEngine } from '../node/workerEngine';
import type { BackendOptions as ProgramOptions } from './program';

export interface BackendOptions extends ProgramOptions {
  /** Record the session for `vhost-lens replay` (the proxy's capture format). */
  capture?: string;
}

/**
 * Serves a front-end with a built-in vhost-user device (blk on a raw image, net on a TAP device or in loopback).
 * Every request and every reply is reported as a wire record, so the tracker derives the same state as in proxy mode.
 */
export class Backend extends WorkerEngine {
  constructor(readonly opts: BackendOptions) {
    const { capture, ...program } = opts;
    const dev = opts.device === 'blk' ? `blk:${opts.blk?.image}` : `net:${opts.net?.mode}${opts.net?.tap ? `:${opts.net.tap}` : ''}`;
    super('backend', program, {
      device: opts.device, capture, ringCapture: opts.ringCapture ? 'all' : undefined,
      captureHeader: { tool: 'vhost-lens backend', frontend: `${opts.endpoint.mode}:${opts.endpoint.path}`, backend: `built-in ${dev}`, device: opts.device },
    });
  }
}
