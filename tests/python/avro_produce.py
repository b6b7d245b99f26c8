"""Writes records with confluent-kafka's AvroSerializer (auto-registration,
topic subject naming): the independent writer Flowgate's Kafka source reads.

Usage: avro_produce.py BOOTSTRAP TOPIC REGISTRY_URL N
"""
import datetime
import decimal
import sys
import uuid

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

SCHEMA = """{
  "type": "record", "name": "Payment", "namespace": "py",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "payer", "type": "string"},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["CARD", "BANK"]}},
    {"name": "memo", "type": ["null", "string"], "default": null}
  ]
}"""

boot, topic, url, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ser = AvroSerializer(SchemaRegistryClient({"url": url}), SCHEMA, conf={"subject.name.strategy.type": "TOPIC"})
p = Producer({"bootstrap.servers": boot})
epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
for i in range(n):
    value = {
        "id": i,
        "payer": f"pä-{i}",
        "amount": decimal.Decimal(i) / 100 - decimal.Decimal(5),
        "at": epoch + datetime.timedelta(microseconds=i * 1_000_001 - 10_000_000),
        "day": datetime.date(1969, 12, 25) + datetime.timedelta(days=i),
        "ref": uuid.UUID(int=i),
        "kind": "CARD" if i % 2 == 0 else "BANK",
        "memo": None if i % 3 == 0 else f"m{i}",
    }
    p.produce(topic, key=str(i), value=ser(value, SerializationContext(topic, MessageField.VALUE)))
    p.poll(0)
p.flush(30)
print(f"produced {n}")
