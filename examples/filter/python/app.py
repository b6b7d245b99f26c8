"""filter: keeps a record when a predicate on one top-level field holds, drops it otherwise."""
import flowgate_guest as fg

MISSING = object()
OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "exists")
SCHEMA = {
    "field": (lambda v: isinstance(v, str), "a string", fg.REQUIRED),
    "op": (lambda v: v in OPS, "one of " + ", ".join(OPS), "eq"),
    "value": (lambda v: True, "any JSON value", MISSING),  # required unless op is exists
}


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def json_eq(a, b):
    """JSON equality: numbers by value (1 == 1.0), booleans never equal numbers."""
    if is_num(a) and is_num(b):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_eq(a[k], b[k]) for k in a)
    return a == b


COMPARE = {"gt": lambda x, y: x > y, "gte": lambda x, y: x >= y,
           "lt": lambda x, y: x < y, "lte": lambda x, y: x <= y}


def setup(config):
    cfg = fg.parse_config(config, SCHEMA)
    field, op, value = cfg["field"], cfg["op"], cfg.pop("value")
    if value is MISSING and op != "exists":
        raise fg.ConfigError('config key "value" is required')
    if value is not MISSING:
        cfg["value"] = value
    if op in COMPARE and not is_num(value):
        raise fg.ConfigError(f'config key "value" must be a number for op "{op}"')

    def holds(obj):
        if field not in obj:
            return op == "ne"
        v = obj[field]
        if op == "exists":
            return True
        if op == "eq":
            return json_eq(v, value)
        if op == "ne":
            return not json_eq(v, value)
        return is_num(v) and COMPARE[op](v, value)

    def filter_record(r):
        return r if holds(r.json_object()) else None

    return filter_record, cfg


Transformer = fg.export("filter", setup)
