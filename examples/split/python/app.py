"""split: emits one record per element of an array field."""
import json
import flowgate_guest as fg

SCHEMA = {"field": (lambda v: isinstance(v, str), "a string", "items")}


def setup(config):
    cfg = fg.parse_config(config, SCHEMA)
    field = cfg["field"]
    not_array = f"field {json.dumps(field)} is not an array"

    def split(r):
        obj = r.json_object()
        items = obj.get(field)
        if not isinstance(items, list):
            raise fg.Reject(not_array)
        out = []
        for i, item in enumerate(items):
            obj[field] = item
            o = r.copy()
            o.set_json(obj)
            o.set_header("flowgate.split.index", str(i))
            out.append(o)
        return out

    return split, cfg


Transformer = fg.export("split", setup)
