"""pii-mask: replaces the listed top-level fields of a JSON object with a mask."""
import flowgate_guest as fg

SCHEMA = {
    "fields": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
               "an array of strings", ["email"]),
    "mask": (lambda v: isinstance(v, str), "a string", "***"),
    "flag": (lambda v: isinstance(v, str), "a string", None),
}


def setup(config):
    cfg = fg.parse_config(config, SCHEMA)
    fields, mask, flag = cfg["fields"], cfg["mask"], cfg["flag"]

    def mask_pii(r):
        obj = r.json_object()
        for f in fields:
            if f in obj:
                obj[f] = mask
        if flag is not None:
            obj[flag] = True
        r.set_json(obj)
        return r

    return mask_pii, cfg


Transformer = fg.export("pii-mask", setup)
