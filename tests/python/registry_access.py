"""A registry served over TLS with users, driven by Confluent's Python client
configured as its users configure it (`basic.auth.user.info`, `ssl.ca.location`).

Usage: registry_access.py URL CA_FILE ADMIN_PASSWORD READER_PASSWORD.
Exits non-zero with the failed check.
"""
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

url, ca, admin_pw, reader_pw = sys.argv[1:5]
SCHEMA = Schema('{"type":"record","name":"Tls","fields":[{"name":"a","type":"int"}]}', "AVRO")


def client(user_info=None):
    conf = {"url": url, "ssl.ca.location": ca, "max.retries": 0}
    if user_info is not None:
        conf["basic.auth.user.info"] = user_info
    return SchemaRegistryClient(conf)


def refused(f, status):
    try:
        f()
    except SchemaRegistryError as e:
        assert e.http_status_code == status, (e.http_status_code, e.error_code, e.error_message)
        return
    raise AssertionError(f"expected HTTP {status}")


admin = client(f"admin:{admin_pw}")
schema_id = admin.register_schema("tls-value", SCHEMA)
assert admin.get_latest_version("tls-value").schema_id == schema_id

reader = client(f"reader:{reader_pw}")
assert '"Tls"' in reader.get_schema(schema_id).schema_str
assert reader.get_subjects() == ["tls-value"]
refused(lambda: reader.register_schema("other-value", SCHEMA), 403)
refused(lambda: reader.delete_subject("tls-value"), 403)
refused(lambda: client().get_subjects(), 401)
refused(lambda: client(f"admin:{admin_pw}x").get_subjects(), 401)
assert admin.delete_subject("tls-value") == [1]
print("ok")
