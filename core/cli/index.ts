// CLI entry point (bundled to dist/cli.js): registers every command module, then runs main().
import { main } from './main';
import './demo';
import './rings';
import './backend';

// `vhost-lens … | head` closes our stdout: that is the reader's choice, not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => { if (e.code === 'EPIPE') process.exit(0); });
main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
