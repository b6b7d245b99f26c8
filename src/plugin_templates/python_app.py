"""{{name}}: a Flowgate transform plugin."""
import flowgate_guest as fg

# Config keys: (check, description, default or fg.REQUIRED).
SCHEMA = {
    "field": (lambda v: isinstance(v, str), "a string", "processed"),
}


def setup(config):
    cfg = fg.parse_config(config, SCHEMA)
    field = cfg["field"]

    # Return the record (changed or not), None to drop it, a list to emit several,
    # or raise fg.Reject("reason") to send it to the pipeline's error policy.
    def transform(r):
        obj = r.json_object()  # rejects values that are not JSON objects
        obj[field] = True
        r.set_json(obj)
        return r

    return transform, cfg


Transformer = fg.export("{{name}}", setup)
