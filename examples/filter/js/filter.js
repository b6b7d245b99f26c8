// filter: keeps a record when a predicate on one top-level field holds, drops it otherwise.
import { log, counter } from 'flowgate:transform/host@0.2.0';
import { makeTransformer, parseConfig, isString, REQUIRED, ConfigError } from '../../../wit/guest/js/flowgate-guest.js';

const OPS = ['eq', 'ne', 'gt', 'gte', 'lt', 'lte', 'exists'];
const SCHEMA = {
  field: [isString, 'a string', REQUIRED],
  op: [(v) => OPS.includes(v), 'one of ' + OPS.join(', '), 'eq'],
  value: [() => true, 'any JSON value', undefined], // required unless op is exists
};
const COMPARE = { gt: (x, y) => x > y, gte: (x, y) => x >= y, lt: (x, y) => x < y, lte: (x, y) => x <= y };
const isNum = (v) => typeof v === 'number';

/** JSON equality: numbers by value, objects by keys (any order) and values. */
function jsonEq(a, b) {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a), kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && jsonEq(a[k], b[k]));
}

function setup(config) {
  const cfg = parseConfig(config, SCHEMA);
  const { field, op, value } = cfg;
  if (!Object.hasOwn(cfg, 'value') && op !== 'exists') throw new ConfigError('config key "value" is required');
  if (COMPARE[op] && !isNum(value)) throw new ConfigError(`config key "value" must be a number for op "${op}"`);
  const holds = (obj) => {
    if (!Object.hasOwn(obj, field)) return op === 'ne';
    const v = obj[field];
    if (op === 'exists') return true;
    if (op === 'eq') return jsonEq(v, value);
    if (op === 'ne') return !jsonEq(v, value);
    return isNum(v) && COMPARE[op](v, value);
  };
  return [(r) => (holds(r.jsonObject()) ? r : null), cfg];
}

export const transformer = makeTransformer('filter', setup, { log, counter });
