// Usage: node wit/guest/js/build.mjs SOURCE.js OUT.wasm
// Componentizes an ES module (which may import ./ or ../ modules inside the repo, such
// as flowgate-guest.js) into a component of world flowgate:transform/transform with
// every WASI feature of the engine disabled, so that it imports only the world's
// `host`. componentize-js comes from scripts/guest-toolchains.sh
// ($FLOWGATE_TOOLS/node). Prints the component's size, build time and imports.
import { writeFile, mkdir } from 'node:fs/promises';
import { dirname, join, resolve, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { homedir } from 'node:os';

const [source, out] = process.argv.slice(2);
if (!source || !out) {
  console.error('usage: node build.mjs SOURCE.js OUT.wasm');
  process.exit(2);
}
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const tools = process.env.FLOWGATE_TOOLS || join(homedir(), '.cache/flowgate-tools');
const cjs = join(tools, 'node/node_modules/@bytecodealliance/componentize-js/src/componentize.js');
let componentize;
try {
  ({ componentize } = await import(pathToFileURL(cjs)));
} catch (e) {
  console.error(`${cjs}: ${e.message}\nrun scripts/guest-toolchains.sh`);
  process.exit(1);
}
const sourcePath = resolve(source);
const outPath = resolve(out);
// componentize-js maps the cwd into the engine's file system when the source lies
// under it, which is what lets relative imports reach wit/guest/js from examples/.
process.chdir(root);
if (relative(root, sourcePath).startsWith('..')) {
  console.error(`${sourcePath} must lie inside ${root}`);
  process.exit(2);
}
const t0 = Date.now();
const { component } = await componentize({
  sourcePath,
  witPath: join(root, 'wit'),
  worldName: 'transform',
  disableFeatures: ['random', 'stdio', 'clocks', 'http', 'fetch-event'],
});
await mkdir(dirname(outPath), { recursive: true });
await writeFile(outPath, component);
const secs = ((Date.now() - t0) / 1000).toFixed(1);
console.log(`${outPath}: ${(component.length / 1e6).toFixed(1)} MB in ${secs} s`);
