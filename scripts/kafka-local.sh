#!/usr/bin/env bash
# A local Kafka-protocol broker for trying the Kafka pipelines: tansu on
# 127.0.0.1:9092 (memory storage: everything is gone when it stops), with the
# topics of pipelines/kafka-to-kafka.yaml, pipelines/file-to-kafka.yaml and
# pipelines/postgres-to-kafka.yaml.
# Runs in the foreground; Ctrl-C stops it.
#   scripts/kafka-local.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/broker-tools.sh
port="${1:-9092}"
url="tcp://127.0.0.1:$port"
tansu="$FLOWGATE_TOOLS/bin/tansu"
env -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE \
  "$tansu" broker --storage-engine memory://tansu/ --listener-url "$url" --advertised-listener-url "$url" &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null' EXIT INT TERM
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 $broker 2>/dev/null || { echo "kafka-local: tansu did not start (port $port taken?)" >&2; exit 1; }
  sleep 0.05
done
for t in orders orders-masked orders-dead-letters events.eu events.us shop.orders shop.customers shop-dead-letters; do
  "$tansu" topic create --broker "$url" --partitions 3 "$t" >/dev/null
done
echo "kafka-local: broker on 127.0.0.1:$port with topics orders, orders-masked, orders-dead-letters, events.eu, events.us, shop.orders, shop.customers, shop-dead-letters"
wait $broker
