// split: emits one record per element of an array field.
import { log, counter } from 'flowgate:transform/host@0.2.0';
import { makeTransformer, parseConfig, isString, Reject } from '../../../wit/guest/js/flowgate-guest.js';

function setup(config) {
  const cfg = parseConfig(config, { field: [isString, 'a string', 'items'] });
  const field = cfg.field;
  const notArray = `field ${JSON.stringify(field)} is not an array`;
  const split = (r) => {
    const obj = r.jsonObject();
    const items = obj[field];
    if (!Object.hasOwn(obj, field) || !Array.isArray(items)) throw new Reject(notArray);
    return items.map((item, i) => {
      obj[field] = item;
      const o = r.copy();
      o.setJson(obj);
      o.setHeader('flowgate.split.index', String(i));
      return o;
    });
  };
  return [split, cfg];
}

export const transformer = makeTransformer('split', setup, { log, counter });
