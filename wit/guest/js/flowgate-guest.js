// Guest helper for Flowgate transform plugins written in JavaScript (componentize-js).
//
// A plugin author writes a function `f(record)` and never sees the packed bytes of
// BATCH-FORMAT.md. `f` returns:
//   - null/undefined: drop the record (EMIT zero records),
//   - a Record: emit it (KEEP if it is the input record itself, unmodified; VALUE if only
//     its value changed, which leaves the key, timestamp and headers to the host),
//   - an array of Record: emit them in its place,
// and throws `new Reject(reason)` to fail that record. Any other exception also
// fails only that record, with the reason "<ErrorName>: <message>".
//
// Record fields: key (Uint8Array|null), value (Uint8Array), headers ([name, Uint8Array][]),
// timestamp (number|null, milliseconds since the Unix epoch; kept exactly as the i64
// it came in as unless assigned), meta (where it came from: a frozen object of the fields
// its source sets, e.g. {path: 'in.jsonl', line: 3, offset: 40}; INT fields are numbers,
// TEXT fields strings; BATCH-FORMAT.md lists them).
//
// JSON is JavaScript's: numbers are doubles (integers beyond 2^53 lose precision, 1.0
// is written back as 1) and integer-like keys ("1", "2") move to the front of an object
// when it is written back. Invalid UTF-8 in a value makes json() throw.
//
// `makeTransformer(name, setup, host)` builds the object to export as `transformer`;
// `setup(configText) -> [f, summary]` validates the config (throw ConfigError) and
// returns the transform function. This module imports nothing from the component
// world, so it also runs under plain Node (tests).

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

export class Reject extends Error {
  constructor(reason) { super(String(reason)); this.name = 'Reject'; }
}

export class ConfigError extends Error {
  constructor(message) { super(message); this.name = 'ConfigError'; }
}

export const NO_META = Object.freeze({});

const UNPARSED = Symbol('unparsed');

export class Record {
  constructor(value = new Uint8Array(0), key = null, headers = [], timestamp = null, meta = NO_META) {
    this._key = key; this._value = value; this._headers = headers; this._hbatch = null;
    this._ts = timestamp == null ? null : BigInt(timestamp);
    this._meta = meta; this._batch = null; this._json = UNPARSED; this._dirty = true; this._valueSet = false;
  }
  get key() { return this._key; }
  set key(v) { this._key = v; this._dirty = true; }
  get value() { return this._value; }
  // A new value alone is answered with VALUE: the host keeps the key, the
  // timestamp and the headers, which are then not written back.
  set value(v) { this._value = v; this._json = UNPARSED; this._valueSet = true; }
  // Reading `headers` marks the record modified: the array may be changed in place.
  get headers() { this._dirty = true; return this._hs(); }
  set headers(v) { this._headers = v; this._hbatch = null; this._dirty = true; }
  // A decoded record holds the offset of its headers in `_hbatch` until they are
  // first read: most transforms never look.
  _hs() {
    if (this._hbatch !== null) { this._headers = decodeHeaders(this._hbatch, this._headers); this._hbatch = null; }
    return this._headers;
  }
  get timestamp() { return this._ts === null ? null : Number(this._ts); }
  set timestamp(v) { this._ts = v == null ? null : BigInt(typeof v === 'number' ? Math.trunc(v) : v); this._dirty = true; }
  // A decoded record holds the offset of its meta in `_batch` until it is first read:
  // most transforms never look.
  get meta() {
    if (this._batch !== null) { this._meta = decodeMeta(this._batch, this._meta); this._batch = null; }
    return this._meta;
  }

  /** The value (Uint8Array) of the first header called `name`, or null. */
  header(name) {
    for (const h of this._hs()) if (h[0] === name) return h[1];
    return null;
  }
  /** Sets header `name` (string or Uint8Array value): replaces the first one of that
   *  name in place and removes any later ones, or appends it. */
  setHeader(name, value) {
    const v = typeof value === 'string' ? enc.encode(value) : value;
    const hs = [];
    let done = false;
    for (const h of this._hs()) {
      if (h[0] !== name) hs.push(h);
      else if (!done) { hs.push([name, v]); done = true; }
    }
    if (!done) hs.push([name, v]);
    this.headers = hs;
  }
  /** The value parsed as JSON (cached until `value` is set). Throws on bad JSON. */
  json() {
    if (this._json === UNPARSED) this._json = JSON.parse(dec.decode(this._value));
    return this._json;
  }
  /** `json()`, but the record fails ("value is not a JSON object") unless it is one. */
  jsonObject() {
    let o;
    try { o = this.json(); } catch { o = null; }
    if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new Reject('value is not a JSON object');
    return o;
  }
  /** Sets the value to `obj` as compact JSON. */
  setJson(obj) { this.value = enc.encode(JSON.stringify(obj)); this._json = obj; }
  /** A modified copy (same key, headers, timestamp and meta). */
  copy() {
    const r = new Record(this._value, this._key, this._hs().slice(), null, this._meta);
    r._ts = this._ts; r._batch = this._batch;
    return r;
  }
}

/** Packed input batch (Uint8Array) -> Record[], all unmodified. */
export function decodeBatch(batch) {
  const b = batch instanceof Uint8Array ? batch : new Uint8Array(batch);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const count = dv.getUint32(0, true);
  const out = new Array(count);
  let p = 4;
  const bytes = (n) => { const s = b.subarray(p, p + n); if (s.length !== n) throw new RangeError('batch truncated'); p += n; return s; };
  for (let i = 0; i < count; i++) {
    const flags = b[p++];
    let key = null, ts = null;
    if (flags & 1) { const n = dv.getUint32(p, true); p += 4; key = bytes(n); }
    const vn = dv.getUint32(p, true); p += 4;
    const value = bytes(vn);
    if (flags & 2) { ts = dv.getBigInt64(p, true); p += 8; }
    const hp = p, hc = dv.getUint16(p, true); p += 2;
    // Walked over here, decoded at the first look.
    for (let h = 0; h < hc; h++) {
      p += 2 + dv.getUint16(p, true);
      p += 4 + dv.getUint32(p, true);
    }
    if (p > b.length) throw new RangeError('batch truncated');
    const mp = p, mc = b[p++];
    for (let f = 0; f < mc; f++) {
      p += 1 + b[p];
      const t = b[p++];
      if (t === 0) p += 8;
      else if (t === 1) { const n = dv.getUint32(p, true); p += 4; bytes(n); }
      else throw new RangeError(`unknown metadata type ${t}`);
    }
    const r = new Record(value, key, hc ? hp : [], null, mc ? mp : NO_META);
    if (hc) r._hbatch = b;
    if (mc) r._batch = b;
    r._ts = ts; r._dirty = false;
    out[i] = r;
  }
  if (p !== b.length) throw new RangeError(`batch has ${b.length - p} bytes left over`);
  return out;
}

/** The metadata at offset `p` of batch `b` (count, then fields) as a frozen object. */
function decodeHeaders(b, p) {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const hc = dv.getUint16(p, true); p += 2;
  const headers = new Array(hc);
  for (let h = 0; h < hc; h++) {
    const nn = dv.getUint16(p, true); p += 2;
    const name = dec.decode(b.subarray(p, p + nn)); p += nn;
    const hv = dv.getUint32(p, true); p += 4;
    headers[h] = [name, b.subarray(p, p + hv)]; p += hv;
  }
  return headers;
}

function decodeMeta(b, p) {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const m = {};
  const count = b[p++];
  for (let f = 0; f < count; f++) {
    const n = b[p];
    const name = dec.decode(b.subarray(p + 1, p + 1 + n)); p += 1 + n;
    if (b[p++] === 0) { m[name] = Number(dv.getBigInt64(p, true)); p += 8; }
    else { const l = dv.getUint32(p, true); m[name] = dec.decode(b.subarray(p + 4, p + 4 + l)); p += 4 + l; }
  }
  return Object.freeze(m);
}

/** Growable little-endian byte buffer. */
class Writer {
  constructor(n = 1024) { this.b = new Uint8Array(n); this.dv = new DataView(this.b.buffer); this.p = 0; }
  room(n) {
    if (this.p + n <= this.b.length) return;
    const nb = new Uint8Array(Math.max(this.b.length * 2, this.p + n));
    nb.set(this.b.subarray(0, this.p)); this.b = nb; this.dv = new DataView(nb.buffer);
  }
  u8(v) { this.room(1); this.b[this.p++] = v; }
  u16(v) { this.room(2); this.dv.setUint16(this.p, v, true); this.p += 2; }
  u32(v) { this.room(4); this.dv.setUint32(this.p, v, true); this.p += 4; }
  i64(v) { this.room(8); this.dv.setBigInt64(this.p, v, true); this.p += 8; }
  bytes(v) { this.room(v.length); this.b.set(v, this.p); this.p += v.length; }
  done() { return this.b.subarray(0, this.p); }
}

function putRecord(w, r) {
  const key = r._key, ts = r._ts, hs = r._hs();
  w.u8((key !== null ? 1 : 0) | (ts !== null ? 2 : 0));
  if (key !== null) { w.u32(key.length); w.bytes(key); }
  w.u32(r._value.length); w.bytes(r._value);
  if (ts !== null) { if (BigInt.asIntN(64, ts) !== ts) throw new RangeError('timestamp out of i64 range'); w.i64(ts); }
  w.u16(hs.length);
  for (const [name, v] of hs) {
    const nb = enc.encode(name);
    w.u16(nb.length); w.bytes(nb); w.u32(v.length); w.bytes(v);
  }
}

/** An outcome for encodeOutcomes: keep the input record unchanged. */
export const KEEP = 0;

/** Outcomes -> packed Uint8Array. Each outcome is KEEP, an array of Record (EMIT;
 *  [] drops) or a Reject / string (FAIL with that reason). */
export function encodeOutcomes(outcomes) {
  const w = new Writer();
  w.u32(outcomes.length);
  for (const [i, o] of outcomes.entries()) {
    w.u32(i);
    if (o === KEEP) w.u8(0);
    else if (Array.isArray(o)) { w.u8(1); w.u32(o.length); for (const r of o) putRecord(w, r); }
    else {
      const reason = enc.encode(o instanceof Error ? o.message : String(o));
      w.u8(2); w.u32(reason.length); w.bytes(reason);
    }
  }
  return w.done();
}

function checkRecord(x) {
  if (!(x instanceof Record)) throw new TypeError('transform returned something other than null, a Record or an array of Record');
  if (!(x._value instanceof Uint8Array) || !(x._key === null || x._key instanceof Uint8Array)) throw new TypeError('record key and value must be Uint8Array');
  for (const h of x._hs()) if (typeof h[0] !== 'string' || !(h[1] instanceof Uint8Array)) throw new TypeError('headers must be [string, Uint8Array] pairs');
}

/** Runs `f` on each decoded record and returns the packed outcomes. Any exception
 *  while running `f` or packing what it returned fails only that record. */
export function processRecords(records, f) {
  const w = new Writer();
  w.u32(records.length);
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    w.u32(i);
    const start = w.p;
    let reason;
    try {
      let res = f(r);
      if (res === r && !r._dirty) {
        if (!r._valueSet) { w.u8(0); continue; }
        if (!(r._value instanceof Uint8Array)) throw new TypeError('record key and value must be Uint8Array');
        w.u8(3); w.u32(r._value.length); w.bytes(r._value);
        continue;
      }
      if (res == null) res = [];
      else if (!Array.isArray(res)) res = [res];
      w.u8(1); w.u32(res.length);
      for (const x of res) { checkRecord(x); putRecord(w, x); }
      continue;
    } catch (e) {
      reason = e instanceof Reject ? e.message : e instanceof Error ? `${e.name}: ${e.message}` : `Error: ${String(e)}`;
    }
    w.p = start;
    const rb = enc.encode(reason);
    w.u8(2); w.u32(rb.length); w.bytes(rb);
  }
  return w.done();
}

/** Packed batch -> packed outcomes, running `f` on each record. */
export function processBatch(batch, f) { return processRecords(decodeBatch(batch), f); }

export const REQUIRED = Symbol('required');

/** Parses the JSON config text (an object; "" counts as {}) against `schema`:
 *  {key: [check, what, default]} where check(value) -> bool, `what` names the expected
 *  type in the error, and default may be REQUIRED (undefined: the key stays absent).
 *  Returns an object with the keys given or defaulted. Throws ConfigError. */
export function parseConfig(text, schema) {
  let cfg;
  try { cfg = text.trim() ? JSON.parse(text) : {}; } catch (e) { throw new ConfigError(`config is not valid JSON: ${e.message}`); }
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) throw new ConfigError('config must be a JSON object');
  for (const k of Object.keys(cfg)) if (!Object.hasOwn(schema, k)) throw new ConfigError(`unknown config key ${JSON.stringify(k)}`);
  const out = {};
  for (const [k, [check, what, dflt]] of Object.entries(schema)) {
    if (Object.hasOwn(cfg, k)) {
      if (!check(cfg[k])) throw new ConfigError(`config key ${JSON.stringify(k)} must be ${what}`);
      out[k] = cfg[k];
    } else if (dflt === REQUIRED) throw new ConfigError(`config key ${JSON.stringify(k)} is required`);
    else if (dflt !== undefined) out[k] = dflt;
  }
  return out;
}

export const isString = (v) => typeof v === 'string';

/** The object to export as `transformer`. `setup(configText) -> [f, summary]`
 *  (summary: a string, or anything JSON-serializable such as the parsed config); a
 *  thrown ConfigError makes init return err(message). `host` is {log, counter} as
 *  imported from 'flowgate:transform/host@0.2.0'. init logs "<name> ready: <summary>",
 *  process counts the batch's records in the counter "records". */
export function makeTransformer(name, setup, host) {
  let f = () => { throw new Reject('plugin not initialized'); };
  return {
    init(config) {
      let summary;
      // componentize-js turns a thrown string into result::err(string).
      try { [f, summary] = setup(config); } catch (e) {
        throw e instanceof ConfigError ? e.message : e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      }
      host.log('info', `${name} ready: ${typeof summary === 'string' ? summary : JSON.stringify(summary)}`);
    },
    process(batch) {
      const records = decodeBatch(batch);
      host.counter('records', BigInt(records.length));
      return processRecords(records, f);
    },
  };
}
