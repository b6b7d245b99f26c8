// {{name}}: a Flowgate transform plugin.
import { log, counter } from 'flowgate:transform/host@0.2.0';
import { makeTransformer, parseConfig, isString } from './flowgate-guest.js';

// Config keys: [check, description, default or REQUIRED].
const SCHEMA = { field: [isString, 'a string', 'processed'] };

function setup(config) {
  const cfg = parseConfig(config, SCHEMA);
  // Return the record (changed or not), null to drop it, an array to emit several,
  // or throw new Reject('reason') to send it to the pipeline's error policy.
  const transform = (r) => {
    const obj = r.jsonObject(); // rejects values that are not JSON objects
    obj[cfg.field] = true;
    r.setJson(obj);
    return r;
  };
  return [transform, cfg];
}

export const transformer = makeTransformer('{{name}}', setup, { log, counter });
