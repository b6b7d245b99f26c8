"""Pure-Python checks of flowgate_guest's batch decoding and outcome encoding.

Run: python3 wit/guest/python/test_flowgate_guest.py   (or with pytest)
"""
import json
import os
import struct
import sys
import unittest

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flowgate_guest as fg  # noqa: E402

# The example of BATCH-FORMAT.md: value {"a":1}, no key, timestamp 5, header h: v,
# from line 3 at offset 40 of in.jsonl.
EXAMPLE = bytes.fromhex(
    "01000000" "02" "07000000" "7b2261223a317d" "0500000000000000" "0100" "0100680100000076" "03"
    "04" + b"path".hex() + "01" "08000000" + b"in.jsonl".hex()
    + "04" + b"line".hex() + "00" "0300000000000000"
    + "06" + b"offset".hex() + "00" "2800000000000000")


def rec(value, key=None, ts=None, headers=(), meta=(), with_meta=True):
    """Packs one record independently of the helper; ``meta``: (name, int or str) pairs."""
    out = bytes([(key is not None) | ((ts is not None) << 1)])
    if key is not None:
        out += struct.pack("<I", len(key)) + key
    out += struct.pack("<I", len(value)) + value
    if ts is not None:
        out += struct.pack("<q", ts)
    out += struct.pack("<H", len(headers))
    for n, v in headers:
        out += struct.pack("<H", len(n)) + n + struct.pack("<I", len(v)) + v
    if with_meta:
        out += bytes([len(meta)])
        for n, v in meta:
            out += bytes([len(n.encode())]) + n.encode()
            if isinstance(v, int):
                out += b"\x00" + struct.pack("<q", v)
            else:
                out += b"\x01" + struct.pack("<I", len(v.encode())) + v.encode()
    return out


def batch(*records):
    return struct.pack("<I", len(records)) + b"".join(records)


def outcomes(*bodies):
    """Packs outcomes, each given as its tag and payload, with their indices."""
    return struct.pack("<I", len(bodies)) + b"".join(struct.pack("<I", i) + o for i, o in enumerate(bodies))


def fail(reason):
    r = reason.encode()
    return b"\x02" + struct.pack("<I", len(r)) + r


class DecodeTest(unittest.TestCase):
    def test_example(self):
        [r] = fg.decode_batch(EXAMPLE)
        self.assertIsNone(r.key)
        self.assertEqual(r.value, b'{"a":1}')
        self.assertEqual(r.timestamp, 5)
        self.assertEqual(r.header("h"), b"v")
        self.assertIsNone(r.header("x"))
        self.assertEqual(r.meta, {"path": "in.jsonl", "line": 3, "offset": 40})
        self.assertEqual(list(r.meta), ["path", "line", "offset"])
        self.assertEqual(r.json(), {"a": 1})

    def test_all_fields(self):
        data = batch(rec(b"v1", key=b"k", ts=-(2**63), headers=[(b"a", b""), ("é".encode(), b"\xff")],
                         meta=[("schema", "public"), ("table", "ü"), ("lsn", 2**63 - 1), ("n", -1), ("", "")]),
                     rec(b"", key=b""))
        r1, r2 = fg.decode_batch(data)
        self.assertEqual((r1.key, r1.value, r1.timestamp), (b"k", b"v1", -(2**63)))
        self.assertEqual(r1.headers, [("a", b""), ("é", b"\xff")])
        self.assertEqual(r1.meta, {"schema": "public", "table": "ü", "lsn": 2**63 - 1, "n": -1, "": ""})
        self.assertEqual((r2.key, r2.value, r2.timestamp, r2.headers, r2.meta), (b"", b"", None, [], {}))
        self.assertEqual(fg.decode_batch(b"\0\0\0\0"), [])

    def test_malformed(self):
        with self.assertRaises(ValueError):
            fg.decode_batch(EXAMPLE + b"\0")
        with self.assertRaises(Exception):
            fg.decode_batch(EXAMPLE[:-1])
        with self.assertRaisesRegex(ValueError, "unknown metadata type 2"):
            fg.decode_batch(batch(rec(b"v")[:-1] + b"\x01\x01x\x02" + bytes(8)))

    def test_meta_read_only(self):
        [r] = fg.decode_batch(EXAMPLE)
        with self.assertRaises(AttributeError):
            r.meta = fg.NO_META
        with self.assertRaises(TypeError):
            r.meta["line"] = 4
        # A copy, made before or after the meta is first read, has the same.
        self.assertEqual(r.copy().meta, r.meta)
        self.assertEqual(r.copy().meta, {"path": "in.jsonl", "line": 3, "offset": 40})
        self.assertEqual(fg.Record(b"", meta={"seq": 1}).copy().meta, {"seq": 1})


class ProcessTest(unittest.TestCase):
    def test_doc_answers(self):
        self.assertEqual(fg.process_batch(EXAMPLE, lambda r: r).hex(), "010000000000000000")
        self.assertEqual(fg.process_batch(EXAMPLE, lambda r: None).hex(), "01000000000000000100000000")

    def test_keep_only_when_unmodified(self):
        def emits(f):
            return fg.process_batch(EXAMPLE, f)[8] == 1

        def tag(f):
            return fg.process_batch(EXAMPLE, f)[8]

        self.assertEqual(tag(lambda r: (r.json(), r.header("h"), r.meta, r.value, r)[-1]), 0)
        # Only the value changed: VALUE, with the new bytes; the host keeps the rest.
        self.assertEqual(fg.process_batch(EXAMPLE, lambda r: (setattr(r, "value", b"{}"), r)[1])[8:],
                         b"\x03\x02\x00\x00\x00{}")
        self.assertEqual(tag(lambda r: (r.set_json({"a": 1}), r)[1]), 3)
        self.assertTrue(emits(lambda r: (setattr(r, "key", b"k"), r)[1]))
        self.assertTrue(emits(lambda r: (setattr(r, "timestamp", None), r)[1]))
        self.assertTrue(emits(lambda r: (r.set_header("h", "v"), r)[1]))
        self.assertTrue(emits(lambda r: (r.headers.append(("x", b"y")), r)[1]))
        self.assertTrue(emits(lambda r: r.copy()))
        self.assertTrue(emits(lambda r: [r]))

    def test_emit_bytes(self):
        data = batch(rec(b'{"a":1,"b":"\xc3\xa9"}', key=b"k", ts=7, headers=[(b"h", b"v")],
                         meta=[("topic", "t"), ("partition", 1), ("offset", 2)]))

        def f(r):
            obj = r.json()
            obj["a"] = 2
            r.set_json(obj)
            r.set_header("x", "1")
            c = r.copy()
            c.key, c.timestamp, c.headers = None, None, []
            return [r, c]

        emit = b"\x01" + struct.pack("<I", 2)
        emit += rec('{"a":2,"b":"é"}'.encode(), key=b"k", ts=7, headers=[(b"h", b"v"), (b"x", b"1")], with_meta=False)
        emit += rec('{"a":2,"b":"é"}'.encode(), with_meta=False)
        self.assertEqual(fg.process_batch(data, f), outcomes(emit))

    def test_failures_stay_with_their_record(self):
        data = batch(rec(b"1"), rec(b"2"), rec(b"3"), rec(b"4"), rec(b"[]"))

        def f(r):
            if r.value == b"1":
                raise fg.Reject("no thanks")
            if r.value == b"2":
                return 1 / 0
            if r.value == b"3":
                return {"not": "a record"}
            if r.value == b"4":
                return r
            r.json_object()

        out = fg.process_batch(data, f)
        want = outcomes(fail("no thanks"), fail("ZeroDivisionError: division by zero"),
                        fail("TypeError: transform returned dict, not None, Record or list of Record"),
                        b"\x00", fail("value is not a JSON object"))
        self.assertEqual(out, want)

    def test_encode_outcomes(self):
        r = fg.Record(b"v", key=b"k", headers=[("n", b"x")], timestamp=1)
        out = fg.encode_outcomes([fg.KEEP, [], [r], fg.Reject("why"), "because"])
        one = b"\x01" + struct.pack("<I", 1) + rec(b"v", key=b"k", ts=1, headers=[(b"n", b"x")], with_meta=False)
        want = outcomes(b"\x00", b"\x01" + struct.pack("<I", 0), one, fail("why"), fail("because"))
        self.assertEqual(out, want)


class RecordTest(unittest.TestCase):
    def test_set_header(self):
        r = fg.Record(b"", headers=[("a", b"1"), ("x", b"old"), ("b", b"2"), ("x", b"dup")])
        r.set_header("x", "new")
        self.assertEqual(r.headers, [("a", b"1"), ("x", b"new"), ("b", b"2")])
        r.set_header("y", b"\0")
        self.assertEqual(r.headers[-1], ("y", b"\0"))

    def test_json(self):
        r = fg.Record(b'{"a": [1, 2.5, null, true], "b": "\\u00e9"}')
        self.assertIs(r.json(), r.json())
        r.set_json(r.json())
        self.assertEqual(r.value, '{"a":[1,2.5,null,true],"b":"é"}'.encode())
        for bad in (b"[1]", b"nope", b"", b'{"a":NaN}', b"\xff"):
            with self.assertRaises(fg.Reject):
                fg.Record(bad).json_object()

    def test_json_coders_match_the_standard_ones(self):
        # The scanner and the C encoder are called directly: what they do not
        # take whole must still be what json.loads and json.dumps do.
        for text in (' {"a": 1} ', '[1]\n', '"x"', "0", '{"a":{"b":[]}}'):
            self.assertEqual(fg.Record(text.encode()).json(), json.loads(text))
        for bad in ('{"a":1} x', "  ", "[1,]", '{"a":Infinity}', "[-NaN]"):
            with self.assertRaises(ValueError):
                fg.Record(bad.encode()).json()
        r = fg.Record()
        for obj in ({"k": ["é\n", 1.5, -0.0, 10**30, None, False]}, {1: 2}, "ü", []):
            r.set_json(obj)
            self.assertEqual(r.value, json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())
        for bad, kind in (({"a": float("nan")}, ValueError), ({"a": object()}, TypeError), ([b"x"], TypeError)):
            with self.assertRaises(kind):
                r.set_json(bad)


class ConfigTest(unittest.TestCase):
    SCHEMA = {"name": (lambda v: isinstance(v, str), "a string", fg.REQUIRED),
              "n": (lambda v: isinstance(v, int), "an integer", 3)}

    def test_ok(self):
        self.assertEqual(fg.parse_config('{"name":"x"}', self.SCHEMA), {"name": "x", "n": 3})
        self.assertEqual(fg.parse_config('{"name":"x","n":1}', self.SCHEMA), {"name": "x", "n": 1})

    def test_errors(self):
        for text, msg in [("{}", '"name" is required'), ('{"name":1}', '"name" must be a string'),
                          ('{"name":"x","z":1}', 'unknown config key "z"'), ("[]", "JSON object"),
                          ("{", "not valid JSON"), ('{"name":"x","n":NaN}', "not valid JSON")]:
            with self.assertRaises(fg.ConfigError) as e:
                fg.parse_config(text, self.SCHEMA)
            self.assertIn(msg, str(e.exception))
        self.assertEqual(fg.parse_config("", {}), {})


if __name__ == "__main__":
    unittest.main()
