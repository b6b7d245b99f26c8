// pii-mask: replaces the listed top-level fields of a JSON object with a mask.
import { log, counter } from 'flowgate:transform/host@0.2.0';
import { makeTransformer, parseConfig, isString } from '../../../wit/guest/js/flowgate-guest.js';

const SCHEMA = {
  fields: [(v) => Array.isArray(v) && v.every(isString), 'an array of strings', ['email']],
  mask: [isString, 'a string', '***'],
  flag: [isString, 'a string', undefined],
};

function setup(config) {
  const cfg = parseConfig(config, SCHEMA);
  const { fields, mask, flag } = cfg;
  const maskPii = (r) => {
    const obj = r.jsonObject();
    for (const f of fields) if (Object.hasOwn(obj, f)) obj[f] = mask;
    if (flag !== undefined) obj[flag] = true;
    r.setJson(obj);
    return r;
  };
  return [maskPii, cfg];
}

export const transformer = makeTransformer('pii-mask', setup, { log, counter });
