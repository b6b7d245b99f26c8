#!/usr/bin/env node
// Usage: node wit/guest/js/test/run.mjs [--allow-wasi] DIR   (without DIR: only the helper checks)
//
// Checks built transform plugins without the Rust host. Every DIR/*.wasm whose name
// ends in pii-mask.wasm, filter.wasm, split.wasm or add-header.wasm (e.g.
// py-filter.wasm, js-filter.wasm, rust-filter.wasm) is transpiled with jco, run in
// Node with a `host` import that records logs and counters, and fed packed batches
// (BATCH-FORMAT.md, encoded here independently of the guest helpers). Outcomes are
// compared per record: KEEP and EMIT byte for byte, FAIL by a substring of the reason.
// Also checks that the component imports only flowgate:transform/host@0.2.0 (WASI
// imports are allowed with --allow-wasi and then served by jco's preview2-shim),
// and runs a few unit checks of wit/guest/js/flowgate-guest.js itself.
// Exits non-zero on any failure. Needs jco from scripts/guest-toolchains.sh.
import { readFile, readdir, mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join, resolve, dirname } from 'node:path';
import { tmpdir, homedir } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import v8 from 'node:v8';

// componentize-py's CPython uses extended-const, which Node 20 has behind a flag.
v8.setFlagsFromString('--experimental-wasm-extended-const');

const HERE = dirname(fileURLToPath(import.meta.url));
const TOOLS = process.env.FLOWGATE_TOOLS || join(homedir(), '.cache/flowgate-tools');
const NM = join(TOOLS, 'node/node_modules');
const HOST = 'flowgate:transform/host@0.2.0';
const te = new TextEncoder();
const td = new TextDecoder();

let passed = 0, failed = 0;
function check(ok, what, detail = '') {
  if (ok) passed++;
  else { failed++; console.log(`  FAIL ${what}${detail ? `\n       ${detail}` : ''}`); }
}

// ---- packing, independent of the guest helpers ----------------------------------
const b = (v) => (typeof v === 'string' ? te.encode(v) : v);
class Buf {
  constructor() { this.parts = []; }
  u8(v) { this.parts.push(Uint8Array.of(v)); return this; }
  u16(v) { const a = new Uint8Array(2); new DataView(a.buffer).setUint16(0, v, true); this.parts.push(a); return this; }
  u32(v) { const a = new Uint8Array(4); new DataView(a.buffer).setUint32(0, v, true); this.parts.push(a); return this; }
  i64(v) { const a = new Uint8Array(8); new DataView(a.buffer).setBigInt64(0, BigInt(v), true); this.parts.push(a); return this; }
  raw(v) { this.parts.push(b(v)); return this; }
  bytes() { return Buffer.concat(this.parts); }
}
// rec: { value, key?, ts?, headers?: [[name, value]], meta?: [[name, number (INT) or string (TEXT)]] }
function putRecord(w, r, withMeta) {
  w.u8((r.key != null ? 1 : 0) | (r.ts != null ? 2 : 0));
  if (r.key != null) w.u32(b(r.key).length).raw(r.key);
  w.u32(b(r.value).length).raw(r.value);
  if (r.ts != null) w.i64(r.ts);
  const hs = r.headers || [];
  w.u16(hs.length);
  for (const [n, v] of hs) w.u16(b(n).length).raw(n).u32(b(v).length).raw(v);
  if (withMeta) {
    const m = r.meta || [];
    w.u8(m.length);
    for (const [n, v] of m) {
      w.u8(b(n).length).raw(n);
      if (typeof v === 'string') w.u8(1).u32(b(v).length).raw(v);
      else w.u8(0).i64(v);
    }
  }
}
function encodeBatch(recs) {
  const w = new Buf().u32(recs.length);
  for (const r of recs) putRecord(w, r, true);
  return new Uint8Array(w.bytes());
}
const encodeOut = (recs) => { const w = new Buf(); for (const r of recs) putRecord(w, r, false); return w.bytes(); };

/** Splits packed outcomes into [{tag, n, body (raw record bytes), reason}]; throws if malformed
 *  (an outcome's index must be its position). */
function parseOutcomes(out) {
  const u = Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  let p = 0;
  const need = (n) => { if (p + n > u.length) throw new Error(`outcomes run past the end at ${p}`); };
  need(4);
  const count = u.readUInt32LE(0); p = 4;
  const res = [];
  for (let i = 0; i < count; i++) {
    need(5);
    const index = u.readUInt32LE(p); p += 4;
    if (index !== i) throw new Error(`outcome ${i} answers record ${index}`);
    const tag = u[p++];
    if (tag === 0) res.push({ tag });
    else if (tag === 1) {
      need(4);
      const n = u.readUInt32LE(p); p += 4;
      const start = p;
      for (let j = 0; j < n; j++) {
        need(1); const flags = u[p++];
        if (flags & ~3) throw new Error(`bad flags ${flags} at ${p - 1}`);
        if (flags & 1) { need(4); const l = u.readUInt32LE(p); p += 4 + l; need(0); }
        need(4); const l = u.readUInt32LE(p); p += 4 + l; need(0);
        if (flags & 2) { need(8); p += 8; }
        need(2); const hc = u.readUInt16LE(p); p += 2;
        for (let h = 0; h < hc; h++) {
          need(2); const nl = u.readUInt16LE(p); p += 2 + nl; need(4);
          const vl = u.readUInt32LE(p); p += 4 + vl; need(0);
        }
      }
      res.push({ tag, n, body: u.subarray(start, p) });
    } else if (tag === 2) {
      need(4); const l = u.readUInt32LE(p); p += 4; need(l);
      res.push({ tag, reason: td.decode(u.subarray(p, p + l)) }); p += l;
    } else if (tag === 3) {
      need(4); const l = u.readUInt32LE(p); p += 4; need(l);
      res.push({ tag, value: u.subarray(p, p + l) }); p += l;
    } else throw new Error(`bad tag ${tag} at ${p - 1}`);
  }
  if (p !== u.length) throw new Error(`${u.length - p} bytes left over`);
  return res;
}
/** Readable form of packed out_records, for failure messages. */
function showRecords(body) {
  const u = Buffer.from(body); let p = 0; const out = [];
  while (p < u.length) {
    const flags = u[p++]; const r = {};
    if (flags & 1) { const l = u.readUInt32LE(p); r.key = u.subarray(p + 4, p + 4 + l).toString(); p += 4 + l; }
    const l = u.readUInt32LE(p); r.value = u.subarray(p + 4, p + 4 + l).toString(); p += 4 + l;
    if (flags & 2) { r.ts = u.readBigInt64LE(p).toString(); p += 8; }
    const hc = u.readUInt16LE(p); p += 2; r.headers = [];
    for (let h = 0; h < hc; h++) {
      const nl = u.readUInt16LE(p); const n = u.subarray(p + 2, p + 2 + nl).toString(); p += 2 + nl;
      const vl = u.readUInt32LE(p); r.headers.push([n, u.subarray(p + 4, p + 4 + vl).toString()]); p += 4 + vl;
    }
    out.push(r);
  }
  return JSON.stringify(out);
}
const js = (v) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}` : x));
const showActual = (o) => (o.tag === 0 ? 'KEEP' : o.tag === 2 ? `FAIL ${JSON.stringify(o.reason)}`
  : o.tag === 3 ? `VALUE ${JSON.stringify(td.decode(o.value))}` : `EMIT ${showRecords(o.body)}`);
const showExpected = (e) => (e === 'keep' ? 'KEEP' : e.fail !== undefined ? `FAIL containing ${JSON.stringify(e.fail)}` : `EMIT ${js(e.emit)}`);

// ---- expected behaviour ---------------------------------------------------------
// A case: { config, batches: [[{in: rec, out: 'keep' | {emit: [rec]} | {fail: substring}}]] }
// or { config, initError: substring or RegExp }.
const FULL = { key: 'k1', ts: 1700000000123n, headers: [['h1', 'v1'], ['h2', 'v2']],
  meta: [['path', 'in.jsonl'], ['line', 3], ['offset', 40]] };
const KAFKA = [['topic', 'orders'], ['partition', 7], ['offset', 123456789012]];
const keep = 'keep';
const drop = { emit: [] };
const emit = (...recs) => ({ emit: recs });
const fail = (s) => ({ fail: s });
const NOT_OBJ = 'not a JSON object';
// The key, quoted in any style; a path into it (`fields[1]`) names it too.
const key = (k) => new RegExp(`[\`"'](${k})(\\[\\d+\\])?[\`"']`);
const nonObjects = () => [
  { in: { value: 'not json' }, out: fail(NOT_OBJ) },
  { in: { value: '[1,2]', meta: KAFKA }, out: fail(NOT_OBJ) },
  { in: { value: '' }, out: fail(NOT_OBJ) },
];

const CASES = {
  'pii-mask': [
    { config: '{}', batches: [[
      { in: { ...FULL, value: '{"id":1,"email":"a@x.io","name":"Ann"}' },
        out: emit({ ...FULL, value: '{"id":1,"email":"***","name":"Ann"}' }) },
      { in: { value: '{"id":2}', meta: KAFKA }, out: emit({ value: '{"id":2}' }) },
      { in: { value: '{ "id" : 3 }' }, out: emit({ value: '{"id":3}' }) },
      ...nonObjects(),
      { in: { value: '{ "email" : "b@x.io" , "n" : [1, 2] }' }, out: emit({ value: '{"email":"***","n":[1,2]}' }) },
    ], []] },
    { config: '{"fields":["email","ssn"],"mask":"#","flag":"masked"}', batches: [[
      { in: { value: '{"ssn":"1","a":{"email":"x"},"email":null}' }, out: emit({ value: '{"ssn":"#","a":{"email":"x"},"email":"#","masked":true}' }) },
      { in: { value: '{"masked":false,"b":1}', key: 'k' }, out: emit({ value: '{"masked":true,"b":1}', key: 'k' }) },
      { in: { value: '{"name":"Zoë","email":"ü@x"}' }, out: emit({ value: '{"name":"Zoë","email":"#","masked":true}' }) },
      { in: { value: '{}' }, out: emit({ value: '{"masked":true}' }) },
      { in: { value: '7' }, out: fail(NOT_OBJ) },
    ]] },
    { config: '{"fields":"email"}', initError: key('fields') },
    { config: '{"fields":["email",1]}', initError: key('fields') },
    { config: '{"mask":5}', initError: key('mask') },
    { config: '{"flag":true}', initError: key('flag') },
    { config: '{"bogus":1}', initError: key('bogus') },
    { config: '[]', initError: 'object' },
  ],
  filter: [
    { config: '{"field":"n","op":"gt","value":5}', batches: [[
      { in: { ...FULL, value: '{"n":7}' }, out: keep },
      { in: { value: '{"n":5}' }, out: drop },
      { in: { value: '{"n":"9"}' }, out: drop },
      { in: { value: '{"m":9}' }, out: drop },
      { in: { value: '{"n":5.5}', meta: KAFKA }, out: keep },
      ...nonObjects(),
    ]] },
    { config: '{"field":"n","op":"gte","value":5}', batches: [[
      { in: { value: '{"n":5}' }, out: keep }, { in: { value: '{"n":4.9}' }, out: drop }]] },
    { config: '{"field":"n","op":"lt","value":0}', batches: [[
      { in: { value: '{"n":-1}' }, out: keep }, { in: { value: '{"n":0}' }, out: drop }, { in: { value: '{"n":null}' }, out: drop }]] },
    { config: '{"field":"n","op":"lte","value":0}', batches: [[
      { in: { value: '{"n":0}' }, out: keep }, { in: { value: '{"n":1}' }, out: drop }, { in: { value: '{"n":false}' }, out: drop }]] },
    { config: '{"field":"s","value":"a"}', batches: [[
      { in: { ...FULL, value: '{"s":"a","t":1}' }, out: keep },
      { in: { value: '{"s":"b"}' }, out: drop },
      { in: { value: '{"s":["a"]}' }, out: drop },
      { in: { value: '{"t":"a"}' }, out: drop },
    ]] },
    { config: '{"field":"s","op":"ne","value":"a"}', batches: [[
      { in: { value: '{"t":1}' }, out: keep },
      { in: { value: '{"s":"a"}' }, out: drop },
      { in: { value: '{"s":1}' }, out: keep },
      { in: { value: '{"s":null}' }, out: keep },
    ]] },
    { config: '{"field":"s","op":"exists"}', batches: [[
      { in: { value: '{"s":null}' }, out: keep }, { in: { value: '{}' }, out: drop }, { in: { value: 'x' }, out: fail(NOT_OBJ) }]] },
    { config: '{"field":"n","value":1}', batches: [[
      { in: { value: '{"n":1}' }, out: keep }, { in: { value: '{"n":1.0}' }, out: keep },
      { in: { value: '{"n":true}' }, out: drop }, { in: { value: '{"n":"1"}' }, out: drop }]] },
    { config: '{"field":"o","value":{"a":1,"b":[1,null]}}', batches: [[
      { in: { value: '{"o":{"b":[1,null],"a":1}}' }, out: keep }, { in: { value: '{"o":{"a":1}}' }, out: drop },
      { in: { value: '{"o":{"a":1,"b":[1,null],"c":2}}' }, out: drop }]] },
    { config: '{"field":"s","value":null}', batches: [[
      { in: { value: '{"s":null}' }, out: keep }, { in: { value: '{"s":0}' }, out: drop }]] },
    { config: '{}', initError: key('field') },
    { config: '{"field":"n"}', initError: key('value') },
    { config: '{"field":"n","op":"like","value":1}', initError: key('op|like') },
    { config: '{"field":"n","op":"gt","value":"5"}', initError: key('value') },
    { config: '{"field":1,"value":1}', initError: key('field') },
    { config: '{"field":"n","value":1,"extra":2}', initError: key('extra') },
  ],
  split: [
    { config: '{}', batches: [[
      { in: { key: 'k', ts: -5n, headers: [['h', 'v']], value: '{"id":1,"items":[{"a":1},2],"z":true}', meta: KAFKA },
        out: emit(
          { key: 'k', ts: -5n, headers: [['h', 'v'], ['flowgate.split.index', '0']], value: '{"id":1,"items":{"a":1},"z":true}' },
          { key: 'k', ts: -5n, headers: [['h', 'v'], ['flowgate.split.index', '1']], value: '{"id":1,"items":2,"z":true}' }) },
      { in: { value: '{"items":[]}' }, out: drop },
      { in: { value: '{"items":"x"}' }, out: fail('is not an array') },
      { in: { value: '{"id":2}' }, out: fail('is not an array') },
      { in: { ...FULL, value: '{"items":[null]}' },
        out: emit({ ...FULL, headers: [...FULL.headers, ['flowgate.split.index', '0']], value: '{"items":null}' }) },
      ...nonObjects(),
    ]] },
    { config: '{"field":"xs"}', batches: [[
      { in: { value: '{"xs":["é"],"items":5}' }, out: emit({ value: '{"xs":"é","items":5}', headers: [['flowgate.split.index', '0']] }) },
      { in: { value: '{"items":[1]}' }, out: fail('is not an array') },
    ]] },
    { config: '{"field":3}', initError: key('field') },
    { config: '{"fields":"x"}', initError: key('fields') },
  ],
  'add-header': [
    { config: '{"name":"x-env","value":"prod"}', batches: [[
      { in: { value: 'not json at all' }, out: emit({ value: 'not json at all', headers: [['x-env', 'prod']] }) },
      { in: { ...FULL, value: '{"a":1}' }, out: emit({ ...FULL, headers: [...FULL.headers, ['x-env', 'prod']], value: '{"a":1}' }) },
      { in: { key: 'k', ts: 0n, headers: [['a', '1'], ['x-env', 'old'], ['b', '2']], value: '[1]' },
        out: emit({ key: 'k', ts: 0n, headers: [['a', '1'], ['x-env', 'prod'], ['b', '2']], value: '[1]' }) },
      { in: { value: '', meta: KAFKA }, out: emit({ value: '', headers: [['x-env', 'prod']] }) },
    ], []] },
    { config: '{}', initError: key('name') },
    { config: '{"name":"a"}', initError: key('value') },
    { config: '{"name":"a","value":1}', initError: key('value') },
    { config: '{"name":"a","value":"b","c":1}', initError: key('c') },
  ],
};

// ---- running a component ----------------------------------------------------------
function jcoBin() {
  const local = join(NM, '.bin/jco');
  return existsSync(local) ? local : 'jco';
}

function componentImports(wasm) {
  const r = spawnSync(jcoBin(), ['wit', wasm], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`jco wit ${wasm}: ${r.stderr || r.error}`);
  // Top-level imports of the world (indented two spaces).
  return [...r.stdout.matchAll(/^ {2}import ([^;:]+:[^;]+);$/gm)].map((m) => m[1]);
}

async function wasiShim() {
  for (const p of [join(NM, '@bytecodealliance/jco/node_modules/@bytecodealliance/preview2-shim'),
    join(NM, '@bytecodealliance/preview2-shim')]) {
    if (existsSync(p)) return import(pathToFileURL(join(p, 'dist/nodejs/index.js')));
  }
  throw new Error('no @bytecodealliance/preview2-shim under ' + NM);
}

async function load(wasm, work, allowWasi) {
  const name = wasm.replace(/^.*\//, '').replace(/\.wasm$/, '');
  const out = join(work, name);
  const r = spawnSync(jcoBin(), ['transpile', wasm, '-o', out, '--instantiation', 'async', '-q', '--name', 'component'],
    { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`jco transpile: ${r.stderr || r.error}`);
  const { instantiate } = await import(pathToFileURL(join(out, 'component.js')));
  const modules = new Map();
  const getCoreModule = (p) => {
    if (!modules.has(p)) modules.set(p, readFile(join(out, p)).then((x) => WebAssembly.compile(x)));
    return modules.get(p);
  };
  const shim = allowWasi ? await wasiShim() : null;
  return async () => {
    const events = [];
    const host = {
      log: (level, message) => events.push({ log: level, message }),
      counter: (n, delta) => events.push({ counter: n, delta }),
    };
    const imports = new Proxy({}, {
      get(_, key) {
        if (typeof key !== 'string') return undefined;
        const k = key.replace(/@.*$/, '');
        if (k === 'flowgate:transform/host') return host;
        const m = /^wasi:([^/]+)\/(.+)$/.exec(k);
        if (m && shim) return shim[m[1]]?.[m[2].replace(/-(.)/g, (_x, c) => c.toUpperCase())];
        return undefined;
      },
    });
    const inst = await instantiate(getCoreModule, imports);
    return { t: inst.transformer || inst['flowgate:transform/transformer@0.2.0'], events };
  };
}

async function runCase(fresh, example, c, label) {
  const { t, events } = await fresh();
  let initErr = null;
  try { t.init(c.config); } catch (e) { initErr = e; }
  if (c.initError !== undefined) {
    const msg = initErr && typeof initErr.payload === 'string' ? initErr.payload : null;
    const want = c.initError;
    check(msg !== null && (want instanceof RegExp ? want.test(msg) : msg.includes(want)),
      `${label}: init must return err ${want instanceof RegExp ? `matching ${want}` : `containing ${JSON.stringify(want)}`}`,
      initErr ? `got ${msg !== null ? `err ${JSON.stringify(msg)}` : `exception ${initErr}`}` : 'got ok');
    return;
  }
  check(initErr === null, `${label}: init ok`, initErr && `got ${initErr.payload !== undefined ? `err ${JSON.stringify(initErr.payload)}` : initErr}`);
  if (initErr) return;
  const logs = events.filter((e) => e.log !== undefined);
  check(logs.length === 1 && logs[0].log === 'info' && logs[0].message.startsWith(`${example} ready: `),
    `${label}: init logs one info line "${example} ready: ..."`, JSON.stringify(logs));
  events.length = 0;
  c.batches.forEach((batch, bi) => {
    const input = encodeBatch(batch.map((x) => x.in));
    let out;
    try { out = t.process(input); } catch (e) { check(false, `${label} batch ${bi}: process trapped`, String(e)); return; }
    const counters = events.filter((e) => e.counter !== undefined);
    events.length = 0;
    const n = BigInt(batch.length);
    check((counters.length === 1 && counters[0].counter === 'records' && counters[0].delta === n) ||
      (n === 0n && counters.every((e) => e.delta === 0n)),
    `${label} batch ${bi}: counter("records", ${n}) once`, js(counters));
    let got;
    try { got = parseOutcomes(out); } catch (e) { check(false, `${label} batch ${bi}: malformed outcomes`, e.message); return; }
    check(got.length === batch.length, `${label} batch ${bi}: ${batch.length} outcomes`, `got ${got.length}`);
    batch.forEach((x, i) => {
      const g = got[i];
      if (!g) return;
      let ok;
      if (x.out === 'keep') ok = g.tag === 0;
      else if (x.out.fail !== undefined) ok = g.tag === 2 && g.reason.includes(x.out.fail);
      // VALUE stands for one emitted record: the input with a new value.
      else if (g.tag === 3) ok = x.out.emit.length === 1 && Buffer.compare(encodeOut([{ ...x.in, value: g.value }]), encodeOut(x.out.emit)) === 0;
      else ok = g.tag === 1 && g.n === x.out.emit.length && Buffer.compare(g.body, encodeOut(x.out.emit)) === 0;
      check(ok, `${label} batch ${bi} record ${i} (${JSON.stringify(x.in.value)})`,
        `want ${showExpected(x.out)}\n       got  ${showActual(g)}`);
    });
  });
}

// ---- unit checks of the JS guest helper under Node ---------------------------------
async function helperChecks() {
  const fg = await import(pathToFileURL(join(HERE, '..', 'flowgate-guest.js')));
  // The example of BATCH-FORMAT.md.
  const hexOf = (s) => Buffer.from(s).toString('hex');
  const ex = Uint8Array.from(Buffer.from('01000000' + '02' + '07000000' + '7b2261223a317d' + '0500000000000000' +
    '0100' + '0100680100000076' + '03' + '04' + hexOf('path') + '01' + '08000000' + hexOf('in.jsonl') +
    '04' + hexOf('line') + '00' + '0300000000000000' + '06' + hexOf('offset') + '00' + '2800000000000000', 'hex'));
  const [r] = fg.decodeBatch(ex);
  check(r.key === null && td.decode(r.value) === '{"a":1}' && r.timestamp === 5 && r.headers.length === 1 &&
    td.decode(r.header('h')) === 'v' && js(r.meta) === '{"path":"in.jsonl","line":3,"offset":40}' && Object.isFrozen(r.meta),
  'helper: decodes the BATCH-FORMAT.md example');
  check(js(r.copy().meta) === js(r.meta) && js(fg.decodeBatch(ex)[0].copy().meta) === js(r.meta),
    'helper: a copy has the same meta, made before or after it is first read');
  const [m1, m2] = fg.decodeBatch(encodeBatch([
    { value: '', meta: [['schema', 'public'], ['table', 'ü'], ['lsn', -1], ['', '']] }, { value: '' }]));
  check(js(m1.meta) === '{"schema":"public","table":"ü","lsn":-1,"":""}' && js(m2.meta) === '{}',
    'helper: decodes INT and TEXT metadata, and none');
  const unknown = Buffer.concat([encodeBatch([{ value: '' }]).subarray(0, -1), Buffer.from('01017802' + '00'.repeat(8), 'hex')]);
  try { fg.decodeBatch(unknown); check(false, 'helper: an unknown metadata type throws'); } catch (e) {
    check(/unknown metadata type 2/.test(e.message), 'helper: an unknown metadata type throws', e.message);
  }
  const hex = (f) => Buffer.from(fg.processBatch(ex, f)).toString('hex');
  check(hex((x) => x) === '010000000000000000', 'helper: identity is KEEP (01 00 00 00 00 00 00 00 00)');
  check(hex(() => null) === '01000000000000000100000000', 'helper: null drops (01 00 00 00 00 00 00 00 01 00 00 00 00)');
  check(hex((x) => { x.setHeader('h', 'v'); return x; }).startsWith('010000000000000001'), 'helper: a modified record is EMIT');
  const reason = (f) => { const o = parseOutcomes(fg.processBatch(ex, f))[0]; return o.tag === 2 ? o.reason : null; };
  check(reason(() => { throw new fg.Reject('no thanks'); }) === 'no thanks', 'helper: Reject fails the record with its reason');
  check(reason((x) => x.nope.nope)?.startsWith('TypeError: '), 'helper: another exception fails only that record');
  check(reason(() => 42)?.startsWith('TypeError: '), 'helper: a wrong return type fails only that record');
  const two = encodeBatch([{ value: '1' }, { value: '2', ts: -(2n ** 63n), key: '' }]);
  const out = parseOutcomes(fg.processBatch(two, (x) => { if (td.decode(x.value) === '1') throw new Error('boom'); return x.copy(); }));
  check(out[0].tag === 2 && out[0].reason === 'Error: boom' && out[1].tag === 1 &&
    Buffer.compare(out[1].body, encodeOut([{ value: '2', ts: -(2n ** 63n), key: '' }])) === 0,
  'helper: one failing record leaves the next alone; copy() keeps an i64 timestamp exactly');
  const out2 = parseOutcomes(fg.processBatch(two, (x) => (td.decode(x.value) === '1' ? [x.copy(), 42] : x)));
  check(out2.length === 2 && out2[0].tag === 2 && out2[0].reason.startsWith('TypeError: ') && out2[1].tag === 0,
    'helper: a record half packed when its transform result turns out bad fails alone');
  try { fg.decodeBatch(Uint8Array.of(1, 0, 0, 0, 0, 9, 0, 0, 0)); check(false, 'helper: a truncated batch throws'); } catch { check(true); }
  const enc = parseOutcomes(fg.encodeOutcomes([fg.KEEP, [], new fg.Reject('why')]));
  check(enc.map((o) => o.tag).join() === '0,1,2' && enc[2].reason === 'why', 'helper: encodeOutcomes numbers its outcomes');
}

// ---- main ---------------------------------------------------------------------------
const args = process.argv.slice(2);
const allowWasi = args.includes('--allow-wasi');
const dir = args.find((a) => !a.startsWith('--'));
console.log('guest helper (flowgate-guest.js)');
await helperChecks();
if (!dir) { // helper checks only
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}
const files = (await readdir(dir)).filter((f) => /(pii-mask|filter|split|add-header)\.wasm$/.test(f)).sort();
if (files.length === 0) { console.error(`no *{pii-mask,filter,split,add-header}.wasm in ${dir}`); process.exit(2); }
const work = await mkdtemp(join(tmpdir(), 'flowgate-guest-test-'));
try {
  for (const f of files) {
    const example = /(pii-mask|filter|split|add-header)\.wasm$/.exec(f)[1];
    const wasm = resolve(dir, f);
    console.log(f);
    const before = failed;
    const imports = componentImports(wasm);
    const extra = imports.filter((i) => i !== HOST);
    const importsOk = extra.length === 0 || (allowWasi && extra.every((i) => i.startsWith('wasi:')));
    check(importsOk, `${f}: imports only ${HOST}`,
      `imports: ${imports.join(', ')}${allowWasi ? '' : '\n       (--allow-wasi runs it with WASI from preview2-shim)'}`);
    if (!importsOk) continue;
    let fresh;
    try { fresh = await load(wasm, work, allowWasi); } catch (e) { check(false, `${f}: loads`, e.stack); continue; }
    for (const [i, c] of CASES[example].entries()) {
      try { await runCase(fresh, example, c, `${f} case ${i} ${c.config || '""'}`); } catch (e) { check(false, `${f} case ${i}`, e.stack); }
    }
    console.log(`  ${failed === before ? 'ok' : 'FAILED'} (imports: ${imports.join(', ') || 'none'})`);
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
