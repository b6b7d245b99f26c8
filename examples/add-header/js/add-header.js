// add-header: sets one header on every record; never looks at the value.
import { log, counter } from 'flowgate:transform/host@0.2.0';
import { makeTransformer, parseConfig, isString, REQUIRED } from '../../../wit/guest/js/flowgate-guest.js';

const SCHEMA = { name: [isString, 'a string', REQUIRED], value: [isString, 'a string', REQUIRED] };

function setup(config) {
  const cfg = parseConfig(config, SCHEMA);
  const value = new TextEncoder().encode(cfg.value);
  return [(r) => { r.setHeader(cfg.name, value); return r; }, cfg];
}

export const transformer = makeTransformer('add-header', setup, { log, counter });
