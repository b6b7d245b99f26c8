// Builds {{name}}.wasm from plugin.js: node build.mjs
// Needs @bytecodealliance/componentize-js 0.23 (npm install it here, or have it in
// $FLOWGATE_TOOLS/node/node_modules).
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { homedir } from 'node:os';

const here = dirname(fileURLToPath(import.meta.url));
process.chdir(here);
let componentize;
try {
  ({ componentize } = await import('@bytecodealliance/componentize-js'));
} catch {
  const tools = process.env.FLOWGATE_TOOLS || join(homedir(), '.cache/flowgate-tools');
  const path = join(tools, 'node/node_modules/@bytecodealliance/componentize-js/src/componentize.js');
  ({ componentize } = await import(pathToFileURL(path)));
}
const { component } = await componentize({
  sourcePath: join(here, 'plugin.js'),
  witPath: join(here, 'wit'),
  worldName: 'transform',
  // No WASI at all: the plugin imports only Flowgate's host interface.
  disableFeatures: ['random', 'stdio', 'clocks', 'http', 'fetch-event'],
});
await writeFile(join(here, '{{name}}.wasm'), component);
console.log('built {{name}}.wasm');
