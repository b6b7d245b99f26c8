"""Reads N Avro records with confluent-kafka's AvroDeserializer and prints each
value as a JSON line (decimals as strings, times in ISO 8601, bytes in base64).

Usage: avro_consume.py BOOTSTRAP TOPIC REGISTRY_URL N
"""
import base64
import datetime
import decimal
import json
import sys
import uuid

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

boot, topic, url, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
de = AvroDeserializer(SchemaRegistryClient({"url": url}), conf={"subject.name.strategy.type": "TOPIC"})
c = Consumer({"bootstrap.servers": boot, "group.id": "py-avro-reader", "auto.offset.reset": "earliest",
              "max.poll.interval.ms": 6000, "session.timeout.ms": 6000})
c.subscribe([topic])


def plain(v):
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, datetime.datetime):
        return v.isoformat()
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    return v


seen, idle = 0, 0
while seen < n and idle < 60:
    m = c.poll(1.0)
    if m is None:
        idle += 1
        continue
    if m.error():
        continue
    idle = 0
    v = de(m.value(), SerializationContext(topic, MessageField.VALUE))
    print(json.dumps(plain(v), sort_keys=True), flush=True)
    seen += 1
c.close()
sys.exit(0 if seen == n else 1)
