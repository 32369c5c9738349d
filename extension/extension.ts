// VS Code glue: runs the vhost-user debug adapter (dist/adapter.js) in its own process and completes configurations.
import * as path from 'node:path';
import * as vscode from 'vscode';
import { DEBUG_TYPE } from '../common/dap';
import { INITIAL_CONFIGURATIONS } from '../common/debugConfig';

export function activate(context: vscode.ExtensionContext): void {
  // The engine (its relay worker, the native layer, guest memory fds) lives in the adapter process, never here:
  // a native fault must not take VS Code down. VS Code's own runtime runs it as plain Node.
  context.subscriptions.push(vscode.debug.registerDebugAdapterDescriptorFactory(DEBUG_TYPE, {
    createDebugAdapterDescriptor: () => new vscode.DebugAdapterExecutable(process.execPath,
      [path.join(context.extensionPath, 'dist', 'adapter.js')], { env: { ELECTRON_RUN_AS_NODE: '1' } }),
  }));
  context.subscriptions.push(vscode.debug.registerDebugConfigurationProvider(DEBUG_TYPE, {
    provideDebugConfigurations: () => INITIAL_CONFIGURATIONS as unknown as vscode.DebugConfiguration[],
  }));
}

export function deactivate(): void { /* the adapter process ends with its debug session */ }
