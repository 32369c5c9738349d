// What test/vscode/extension.test.ts leaves in the workspace folder for the extension-host suite (host/suite.ts), and where that suite logs.

export interface HostSpec {
  /** publisher.name from package.json. */
  extensionId: string;
  /** The extensions folder the VSIX was installed into. */
  extensionsDir: string;
  /** Capture file name, relative to the workspace folder. */
  capture: string;
  /** The capture's messages as `vhost-lens replay --json` decodes them; the last one is a request that occurs once. */
  messages: { seq: number; name: string; reply: boolean }[];
}

/** In the workspace folder: the spec (JSON) and the suite's log (one line per step, `PASS` or `FAIL …` last). */
export const SPEC_FILE = 'vhost-lens-test.json';
export const LOG_FILE = 'host.log';
