"""The embedded registry driven by Confluent's own Python client.

Usage: registry_suite.py URL. Exits non-zero with the failed check.
"""
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

url = sys.argv[1]


def client():
    # A fresh client per check: its caches would hide what the server answers.
    return SchemaRegistryClient({"url": url, "max.retries": 0})


def record(*fields):
    fs = ",".join(fields)
    return Schema('{"type":"record","name":"Py","namespace":"t","fields":[%s]}' % fs, "AVRO")


A = '{"name":"a","type":"int"}'
B_DEFAULT = '{"name":"b","type":"string","default":"x"}'
B = '{"name":"b","type":"string"}'
C = '{"name":"c","type":"long"}'


def refused(f, code):
    try:
        f()
    except SchemaRegistryError as e:
        assert e.error_code == code, f"expected error {code}, got {e.error_code}: {e.error_message}"
        return
    raise AssertionError(f"expected error {code}, got success")


# Register, fetch by id, versions, latest.
sid = client().register_schema("py-value", record(A))
assert client().register_schema("py-value", record(A)) == sid, "same schema, same id"
got = client().get_schema(sid)
assert '"name":"a"' in got.schema_str.replace(" ", ""), got.schema_str
sid2 = client().register_schema("py-value", record(A, B_DEFAULT))
assert sid2 != sid
assert client().get_versions("py-value") == [1, 2]
latest = client().get_latest_version("py-value")
assert (latest.version, latest.schema_id) == (2, sid2), latest
v1 = client().get_version("py-value", 1)
assert v1.schema_id == sid
assert "py-value" in client().get_subjects()
found = client().lookup_schema("py-value", record(A))
assert (found.version, found.schema_id) == (1, sid), found
# The same schema under another subject keeps its id.
assert client().register_schema("py-other", record(A)) == sid

# Compatibility, per mode. Default BACKWARD: a field without default cannot be added.
assert client().get_compatibility() == "BACKWARD"
assert not client().test_compatibility("py-value", record(A, B_DEFAULT, C))
refused(lambda: client().register_schema("py-value", record(A, B_DEFAULT, C)), 409)
# FORWARD: adding is fine (old readers ignore it), removing a field without default is not.
client().set_compatibility("py-fwd", "FORWARD")
assert client().get_compatibility("py-fwd") == "FORWARD"
client().register_schema("py-fwd", record(A, C))
client().register_schema("py-fwd", record(A, C, B))
refused(lambda: client().register_schema("py-fwd", record(A, B)), 409)
# FULL: both ways; a field with a default may come and go.
client().set_compatibility("py-full", "FULL")
client().register_schema("py-full", record(A))
client().register_schema("py-full", record(A, B_DEFAULT))
refused(lambda: client().register_schema("py-full", record(A, B_DEFAULT, C)), 409)
# BACKWARD_TRANSITIVE checks every version, BACKWARD only the latest.
client().set_compatibility("py-bt", "BACKWARD_TRANSITIVE")
client().register_schema("py-bt", record(A))
client().register_schema("py-bt", record(A, B_DEFAULT))
refused(lambda: client().register_schema("py-bt", record(A, B)), 409)
client().set_compatibility("py-bt", "BACKWARD")
client().register_schema("py-bt", record(A, B))
# NONE accepts anything.
client().set_compatibility("py-none", "NONE")
client().register_schema("py-none", record(A))
client().register_schema("py-none", record(C))

# Errors keep Confluent's codes.
refused(lambda: client().get_latest_version("no-such-subject"), 40401)
refused(lambda: client().get_version("py-value", 99), 40402)
refused(lambda: client().get_schema(99999), 40403)
refused(lambda: client().register_schema("bad", Schema('{"type":"record"}', "AVRO")), 42201)

# Delete: soft, then permanent; ids stay readable.
assert client().delete_subject("py-other") == [1]
refused(lambda: client().get_latest_version("py-other"), 40401)
assert client().get_schema(sid).schema_str
client().delete_subject("py-other", permanent=True)
print("python registry suite: ok")
