"""add-header: sets one header on every record; never looks at the value."""
import flowgate_guest as fg

SCHEMA = {
    "name": (lambda v: isinstance(v, str), "a string", fg.REQUIRED),
    "value": (lambda v: isinstance(v, str), "a string", fg.REQUIRED),
}


def setup(config):
    cfg = fg.parse_config(config, SCHEMA)
    name, value = cfg["name"], cfg["value"].encode()

    def add_header(r):
        r.set_header(name, value)
        return r

    return add_header, cfg


Transformer = fg.export("add-header", setup)
