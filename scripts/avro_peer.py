"""The peer of the Avro benchmark: confluent-kafka's AvroSerializer and
AvroDeserializer (fastavro underneath) on the records avro_bench wrote, on one
core.

Usage: avro_peer.py RECORDS.jsonl REGISTRY_URL [N]
Prints Markdown table rows: encoding from ready dicts (Decimal and datetime
already built: the serializer alone) and from the JSON text (json.loads +
conversions); decoding to dicts (the deserializer alone) and to JSON text
(+ json.dumps), which is what a consume-transform loop hands on.
"""
import datetime
import decimal
import json
import sys
import time

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

SCHEMA = open(sys.argv[1].replace(".jsonl", ".avsc")).read()
path, url = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 300_000
lines = []
with open(path) as f:
    for line in f:
        lines.append(line)
        if len(lines) == n:
            break


def typed(d):
    d["amount"] = decimal.Decimal(d["amount"])
    d["created"] = datetime.datetime.fromisoformat(d["created"].replace("Z", "+00:00"))
    return d


ser = AvroSerializer(SchemaRegistryClient({"url": url}), SCHEMA, conf={"subject.name.strategy.type": "TOPIC"})
ctx = SerializationContext("bench", MessageField.VALUE)
ser(typed(json.loads(lines[0])), ctx)  # registers the schema; later calls are cached

def timed(label, items, work):
    """Runs `work` on each item and prints the Markdown row."""
    t = time.perf_counter()
    for item in items:
        work(item)
    secs = time.perf_counter() - t
    print(f"| {label} | {n} | {secs:.3f} | {n / secs:.0f} |")


dicts = [typed(json.loads(l)) for l in lines]
timed("python confluent-kafka AvroSerializer, from ready dicts", dicts, lambda d: ser(d, ctx))
timed("python: json.loads + types + AvroSerializer", lines, lambda l: ser(typed(json.loads(l)), ctx))

framed = [ser(d, ctx) for d in dicts]
de = AvroDeserializer(SchemaRegistryClient({"url": url}))
de(framed[0], ctx)  # fetches the schema by id; later calls are cached
timed("python confluent-kafka AvroDeserializer, to dicts", framed, lambda b: de(b, ctx))
timed("python: AvroDeserializer + json.dumps", framed, lambda b: json.dumps(de(b, ctx), default=str))
