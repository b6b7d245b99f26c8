"""Guest helper for Flowgate transform plugins written in Python (componentize-py).

A plugin author writes a function ``f(record)`` and never sees the packed bytes of
BATCH-FORMAT.md. ``f`` returns:

- ``None``: drop the record (EMIT zero records),
- a ``Record``: emit it (KEEP if it is the input record itself, unmodified),
- a list of ``Record``: emit them in its place,

and raises ``Reject(reason)`` to fail that record. Any other exception also fails
only that record, with the reason ``"<ExceptionType>: <message>"``.

``export(name, setup)`` builds the class componentize-py wants for the exported
interface ``transformer``; ``setup(config_text) -> (f, summary)`` validates the config
(raise ``ConfigError``, e.g. through ``parse_config``) and returns the transform
function. The module imports nothing from componentize-py at import time, so it also
runs under plain Python (tests).

JSON values: ``json()`` parses with the standard ``json`` module (NaN/Infinity
refused) and ``set_json`` writes compact UTF-8 JSON, key order preserved.
"""

import json
import struct
from types import MappingProxyType

__all__ = ["Record", "NO_META", "Reject", "ConfigError", "KEEP", "decode_batch",
           "encode_outcomes", "process_batch", "process_records", "parse_config",
           "export", "REQUIRED"]

NO_META = MappingProxyType({})
"""The ``meta`` of a record whose source sets no fields."""

_u16, _u32, _i64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<q")
_u16u, _u32u, _i64u = _u16.unpack_from, _u32.unpack_from, _i64.unpack_from


def _no_constant(c):
    raise ValueError(f"{c} is not JSON")


# Made once: json.loads and json.dumps with settings of their own build a new
# decoder or encoder on every call, a tenth of a record's time.
_decoder = json.JSONDecoder(parse_constant=_no_constant)
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_scan = _decoder.scan_once


def _json_decode(s):
    # The scanner straight: `decode` also matches whitespace before and after
    # with a regular expression, a fifth of the time. What the scanner does
    # not take whole (leading or trailing space, extra data) goes the long way.
    try:
        obj, end = _scan(s, 0)
    except StopIteration:
        return _decoder.decode(s)
    return obj if end == len(s) else _decoder.decode(s)


try:
    # The C encoder, made once: `JSONEncoder.encode` makes one on every call.
    # Arguments: markers, default, string encoder, indent, separators,
    # sort_keys, skipkeys, allow_nan.
    _c_encode = json.encoder.c_make_encoder(None, _encoder.default, json.encoder.c_encode_basestring,
                                            None, ":", ",", False, False, False)
    _c_encode({"a": [1.5, None, True, "\u00e9"]}, 0)

    def _json_encode(obj):
        return "".join(_c_encode(obj, 0))
except Exception:  # noqa: BLE001 - an interpreter without the C encoder, or another signature
    _json_encode = _encoder.encode


class Reject(Exception):
    """Raise it from a transform to fail one record; ``str(reason)`` is the reason."""


class ConfigError(Exception):
    """Raise it from ``setup`` to make ``init`` return ``err(message)``."""


class Record:
    """One record. ``key``, ``value`` and ``timestamp`` are plain attributes; ``meta``,
    where the record came from, is a read-only mapping of the fields its source sets
    (``{"path": "in.jsonl", "line": 3, "offset": 40}``: int or str values, see
    BATCH-FORMAT.md). A record counts as modified once one of them is
    assigned another object, ``headers`` is assigned or read (the list may then be
    changed in place), or ``set_json``/``set_header`` is called: answered VALUE when
    only its value changed (the host keeps the rest), EMIT otherwise."""

    __slots__ = ("key", "value", "timestamp", "_headers", "_meta", "_json", "_dirty", "_orig")

    def __init__(self, value=b"", key=None, headers=None, timestamp=None, meta=NO_META):
        self.key, self.value, self.timestamp = key, value, timestamp
        self._headers = [] if headers is None else headers
        self._meta, self._json, self._dirty, self._orig = MappingProxyType(dict(meta)), None, True, None

    @property
    def headers(self):
        self._dirty = True
        return self._hs()

    def _hs(self):
        """The headers as a list, decoded at the first look (most transforms never do)."""
        h = self._headers
        if type(h) is tuple:  # (batch, offset, count)
            h = self._headers = _decode_headers(*h)
        return h

    @headers.setter
    def headers(self, v):
        self._headers, self._dirty = v, True

    @property
    def meta(self):
        m = self._meta
        if type(m) is tuple:  # (batch, offset, count) until first read: most transforms never look
            m = self._meta = _decode_meta(*m)
        return m

    def _unmodified(self):
        o = self._orig
        return not self._dirty and self.value is o[1] and self.key is o[0] and self.timestamp is o[2]

    def header(self, name):
        """The value (bytes) of the first header called ``name``, or None."""
        for n, v in self._hs():
            if n == name:
                return v
        return None

    def set_header(self, name, value):
        """Sets header ``name`` (str or bytes value): replaces the first one of that
        name in place and removes any later ones, or appends it."""
        if isinstance(value, str):
            value = value.encode()
        old = self._hs()
        hs = [h for h in old if h[0] != name]
        i = next((i for i, h in enumerate(old) if h[0] == name), len(hs))
        hs.insert(i, (name, value))
        self.headers = hs

    def json(self):
        """The value parsed as JSON (cached until ``value`` is set). Raises ValueError."""
        j = self._json
        if j is None or j[0] is not self.value:
            v = self.value
            j = self._json = (v, _json_decode(v.decode() if isinstance(v, (bytes, bytearray)) else v))
        return j[1]

    def json_object(self):
        """``json()``, but the record fails ("value is not a JSON object") unless it is
        a JSON object."""
        try:
            obj = self.json()
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise Reject("value is not a JSON object")
        return obj

    def set_json(self, obj):
        """Sets the value to ``obj`` as compact JSON (UTF-8, no ASCII escaping)."""
        v = self.value = _json_encode(obj).encode()
        self._json = (v, obj)

    def copy(self):
        """A modified copy (same key, headers, timestamp and meta)."""
        r = Record(self.value, self.key, list(self._hs()), self.timestamp)
        r._meta = self._meta
        return r

    def __repr__(self):
        return (f"Record(value={self.value!r}, key={self.key!r}, headers={self._hs()!r}, "
                f"timestamp={self.timestamp!r}, meta={dict(self.meta)!r})")


def decode_batch(batch):
    """Packed input batch (bytes-like) -> list of Record, all unmodified."""
    # Bytes, not a memoryview: a slice of bytes is the value in one step.
    m = batch if type(batch) is bytes else bytes(batch)
    (count,) = _u32u(m, 0)
    p, out, new = 4, [], Record.__new__
    append = out.append
    for _ in range(count):
        flags = m[p]
        p += 1
        key = ts = None
        if flags & 1:
            (n,) = _u32u(m, p)
            p += 4
            key = m[p:p + n]
            p += n
        (n,) = _u32u(m, p)
        p += 4
        value = m[p:p + n]
        p += n
        if flags & 2:
            (ts,) = _i64u(m, p)
            p += 8
        (hc,) = _u16u(m, p)
        p += 2
        # Decoded at the first look: walked over here.
        if hc:
            headers = (m, p, hc)
            for _ in range(hc):
                p += 6 + _u16u(m, p)[0]
                p += _u32u(m, p - 4)[0]
        else:
            headers = []
        mc = m[p]
        p += 1
        if mc:
            meta = (m, p, mc)
            for _ in range(mc):
                p += 1 + m[p]
                t = m[p]
                if t == 0:
                    p += 9
                elif t == 1:
                    (n,) = _u32u(m, p + 1)
                    p += 5 + n
                else:
                    raise ValueError(f"unknown metadata type {t}")
        else:
            meta = NO_META
        r = new(Record)
        r.key, r.value, r.timestamp, r._headers = key, value, ts, headers
        r._meta, r._json, r._dirty, r._orig = meta, None, False, (key, value, ts)
        append(r)
    if p != len(m):
        raise ValueError(f"batch has {len(m) - p} bytes left over")
    return out


def _decode_headers(m, p, count):
    """The ``count`` headers at offset ``p`` of batch ``m``, as a list of (str, bytes)."""
    out = []
    for _ in range(count):
        (n,) = _u16u(m, p)
        name = str(m[p + 2:p + 2 + n], "utf-8")
        p += 2 + n
        (n,) = _u32u(m, p)
        out.append((name, m[p + 4:p + 4 + n]))
        p += 4 + n
    return out


def _decode_meta(m, p, count):
    """The ``count`` metadata fields at offset ``p`` of batch ``m``, as a read-only mapping."""
    out = {}
    for _ in range(count):
        n = m[p]
        name = str(m[p + 1:p + 1 + n], "utf-8")
        p += 1 + n
        if m[p] == 0:
            (out[name],) = _i64u(m, p + 1)
            p += 9
        else:
            (n,) = _u32u(m, p + 1)
            out[name] = str(m[p + 5:p + 5 + n], "utf-8")
            p += 5 + n
    return MappingProxyType(out)


KEEP = 0
"""An outcome for ``encode_outcomes``: keep the input record unchanged."""


def _put_record(out, r):
    key, value, ts, headers = r.key, r.value, r.timestamp, r._hs()
    out.append((key is not None) | ((ts is not None) << 1))
    if key is not None:
        out += _u32.pack(len(key))
        out += key
    out += _u32.pack(len(value))
    out += value
    if ts is not None:
        out += _i64.pack(ts)
    out += _u16.pack(len(headers))
    for name, v in headers:
        nb = name.encode()
        out += _u16.pack(len(nb))
        out += nb
        out += _u32.pack(len(v))
        out += v


def encode_outcomes(outcomes):
    """Outcomes -> packed bytes. Each outcome is ``KEEP``, a list of Record (EMIT;
    ``[]`` drops) or a ``Reject`` / str (FAIL with that reason)."""
    out = bytearray(_u32.pack(len(outcomes)))
    for i, o in enumerate(outcomes):
        out += _u32.pack(i)
        if o is KEEP:
            out.append(0)
        elif isinstance(o, list):
            out.append(1)
            out += _u32.pack(len(o))
            for r in o:
                _put_record(out, r)
        else:
            reason = str(o).encode("utf-8", "replace")
            out.append(2)
            out += _u32.pack(len(reason))
            out += reason
    return bytes(out)


_index_value = struct.Struct("<IBI")


def _outcome(i, r, f, append):
    """Appends outcome ``i`` of record ``r`` (its index, tag and payload); the
    record (not the batch) fails on any exception."""
    try:
        res = f(r)
        o = r._orig
        if res is r and o is not None and not r._dirty and r.key is o[0] and r.timestamp is o[2]:
            # Only the value may have changed: KEEP, or VALUE, which leaves the
            # key, timestamp and headers to the host instead of writing them.
            v = r.value
            if v is o[1]:
                append(_u32.pack(i) + b"\x00")
                return
            if isinstance(v, (bytes, bytearray)):
                append(_index_value.pack(i, 3, len(v)))
                append(v)
                return
        if res is None:
            res = []
        elif isinstance(res, Record):
            res = [res]
        elif not (isinstance(res, list) and all(isinstance(x, Record) for x in res)):
            raise TypeError(f"transform returned {type(res).__name__}, not None, Record or list of Record")
        out = bytearray(_u32.pack(i))
        out.append(1)
        out += _u32.pack(len(res))
        for x in res:
            if not isinstance(x.value, (bytes, bytearray)) or not isinstance(x.key, (bytes, bytearray, type(None))):
                raise TypeError("record key and value must be bytes")
            _put_record(out, x)
        append(out)
        return
    except Reject as e:
        reason = str(e)
    except Exception as e:  # noqa: BLE001 - one record fails, not the batch
        reason = f"{type(e).__name__}: {e}"
    reason = reason.encode("utf-8", "replace")
    append(_index_value.pack(i, 2, len(reason)))
    append(reason)


def process_records(records, f):
    """Runs ``f`` on each decoded record and returns the packed outcomes."""
    parts = [_u32.pack(len(records))]
    append = parts.append
    for i, r in enumerate(records):
        _outcome(i, r, f, append)
    return b"".join(parts)


def process_batch(batch, f):
    """Packed batch -> packed outcomes, running ``f`` on each record."""
    return process_records(decode_batch(batch), f)


REQUIRED = object()


def parse_config(text, schema):
    """Parses the JSON config text (an object; "" counts as {}) against ``schema``:
    ``{key: (check, what, default)}`` where ``check(value) -> bool``, ``what`` names
    the expected type in the error, and ``default`` may be ``REQUIRED``. Returns a dict
    with every key (defaults filled in). Raises ConfigError."""
    try:
        cfg = json.loads(text, parse_constant=_no_constant) if text.strip() else {}
    except ValueError as e:
        raise ConfigError(f"config is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError("config must be a JSON object")
    for k in cfg:
        if k not in schema:
            raise ConfigError(f"unknown config key {json.dumps(k)}")
    out = {}
    for k, (check, what, default) in schema.items():
        if k in cfg:
            if not check(cfg[k]):
                raise ConfigError(f"config key {json.dumps(k)} must be {what}")
            out[k] = cfg[k]
        elif default is REQUIRED:
            raise ConfigError(f"config key {json.dumps(k)} is required")
        else:
            out[k] = default
    return out


def export(name, setup):
    """The class componentize-py implements ``transformer`` with; assign it to
    ``Transformer`` in the app module. ``setup(config_text) -> (f, summary)`` (summary:
    a str, or anything JSON-serializable such as the parsed config);
    a ConfigError from it becomes init's ``err``. ``init`` logs "<name> ready: <summary>",
    ``process`` counts the batch's records in the counter "records"."""
    from componentize_py_types import Err
    from wit_world import exports
    from wit_world.imports import host

    class Transformer(exports.Transformer):
        f = None

        def init(self, config):
            try:
                Transformer.f, summary = setup(config)
            except ConfigError as e:
                raise Err(str(e)) from None
            except Exception as e:  # noqa: BLE001 - a bug in setup: still an err, not a trap
                raise Err(f"{type(e).__name__}: {e}") from None
            if not isinstance(summary, str):
                summary = json.dumps(summary, separators=(",", ":"), ensure_ascii=False)
            host.log(host.Level.INFO, f"{name} ready: {summary}")

        def process(self, batch):
            records = decode_batch(batch)
            host.counter("records", len(records))
            f = Transformer.f or _not_initialized
            return process_records(records, f)

    return Transformer


def _not_initialized(_):
    raise Reject("plugin not initialized")
