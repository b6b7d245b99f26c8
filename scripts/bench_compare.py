"""Before/after: the same cases with two flowgate binaries, alternating run by
run on the same machine, so a change's cost shows without the noise between
two separate sessions. Run through `scripts/bench.sh compare REV`.

    python3 scripts/bench_compare.py BEFORE AFTER [engine wasm kafka cdc avro]

Each case runs REPEAT times per binary (before, after, before, after...); the
median wall time is reported, and the ratio after/before in records per second.
"""
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its helpers; FLOWGATE_BIN is set by bench.sh)

REPEAT = int(os.environ.get("REPEAT", "3"))


def plugins_for(binary):
    """The plugins a binary runs: the `before` binary's as built at its
    revision (FLOWGATE_PLUGINS_BEFORE), since a plugin speaks the contract of
    the tree it was built in."""
    if binary == sys.argv[1]:
        return os.environ.get("FLOWGATE_PLUGINS_BEFORE", os.environ["FLOWGATE_PLUGINS"])
    return os.environ["FLOWGATE_PLUGINS"]


def compare(title, n, run_with):
    """Runs `run_with(binary)` REPEAT times for each binary, alternating."""
    before, after = sys.argv[1], sys.argv[2]
    walls = {before: [], after: []}
    for _ in range(REPEAT):
        for binary in (before, after):
            walls[binary].append(run_with(binary)[0])
    b, a = statistics.median(walls[before]), statistics.median(walls[after])
    print(f"| {title} | {n:,} | {n / b:,.0f} | {n / a:,.0f} | {b / a:.3f} |", flush=True)


def run(binary, work, pipeline_text, name, env=None, one_core=True):
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(pipeline_text)
    cmd = [binary, "run", "--progress", "0s", "--log", "warn", "--state-dir", os.path.join(work, "state"), path]
    if one_core:
        cmd = ["taskset", "-c", "0"] + cmd
    return bench.measure(cmd, work, env=env)


def case_engine(work):
    n = int(os.environ.get("ENGINE_COUNT", "10000000"))
    pipeline = os.path.abspath("pipelines/generate-to-null.yaml")
    compare("engine: generate -> null (one core)", n,
            lambda b: bench.measure(["taskset", "-c", "0", b, "run", "--progress", "0s", "--log", "warn", pipeline],
                                    work, env={"COUNT": str(n)}))


def case_wasm(work):
    n = int(os.environ.get("WASM_COUNT", "1000000"))
    template = '{"id":${seq},"name":"user ${seq}","email":"user${seq}@example.com","note":"${rand_str(120)}"}'
    for plugin, config in (("identity.wasm", "{}"), ("rust-pii-mask.wasm", "{fields: [email], flag: masked}")):
        def text(binary):
            return (f"name: wasm\nsource:\n  generate: {{template: '{template}', count: {n}, seed: 1}}\n"
                    f"transforms:\n  - wasm: {{path: {os.path.join(plugins_for(binary), plugin)}, "
                    f"config: {config}}}\nsink: null\nbatch: {{size: 1000}}\n")
        compare(f"Wasm {plugin}: generate -> plugin -> null (one core)", n, lambda b: run(b, work, text(b), "wasm"))


def case_avro(work):
    n = int(os.environ.get("AVRO_PIPELINE_COUNT", "1000000"))
    schema = os.path.join(work, "order.avsc")
    with open(schema, "w") as f:
        f.write('{"type":"record","name":"Order","fields":[{"name":"id","type":"long"},'
                '{"name":"customer","type":"string"},{"name":"amount","type":"double"}]}')
    template = '{"id":${seq},"customer":"c-${rand_int(1,5000)}","amount":${rand_float(1,500)}}'
    text = (f"name: avro\nsource:\n  generate: {{template: '{template}', count: {n}, seed: 7}}\n"
            f"transforms:\n  - avro: {{schema: {{file: {schema}}}}}\nsink: null\nbatch: {{size: 1000}}\n")
    compare("Avro: generate -> avro step -> null (one core)", n, lambda b: run(b, work, text, "avro"))


def case_kafka(work):
    n = int(os.environ.get("KAFKA_COUNT", "1000000"))
    broker, brokers, topic = bench.start_broker()
    try:
        topic("in")
        # The input, written once by the `after` binary; each run reads it with a new group.
        produce = (f"name: produce\nsource:\n  generate: {{template: '{{\"id\":${{seq}},\"email\":\"u${{seq}}@x.io\","
                   f"\"pad\":\"${{rand_str(100)}}\"}}', count: {n}, seed: 3}}\n"
                   f"sink:\n  kafka: {{brokers: {brokers}, topic: in, linger: 5ms}}\nbatch: {{size: 2000}}\n")
        run(sys.argv[2], work, produce, "produce", one_core=False)
        runs = iter(range(10_000))

        def through(binary):
            r = next(runs)
            topic(f"out{r}")
            text = (f"name: k{r}\nsource:\n  kafka: {{brokers: {brokers}, topics: [in], group: g{r}}}\n"
                    f"transforms:\n  - wasm: {{path: {os.path.join(plugins_for(binary), 'rust-pii-mask.wasm')}, "
                    "config: {fields: [email], flag: masked}}\n"
                    f"sink:\n  kafka: {{brokers: {brokers}, topic: out{r}, compression: lz4}}\n"
                    "batch: {size: 2000, linger: 5ms}\n")
            bench.FLOWGATE = binary
            return bench.run_until_out(work, f"k{r}", text, n, from_first_in=True)

        compare("Kafka -> PII mask -> Kafka (tansu, 3 partitions)", n, through)
    finally:
        broker.terminate()
        broker.wait()


def case_cdc(work):
    n = int(os.environ.get("CDC_COUNT", "200000"))
    pg = bench.Postgres(work)
    try:
        pg.sql("CREATE TABLE t5 (id bigserial PRIMARY KEY, customer int, note text, amount numeric(10,2), "
               "at timestamptz); CREATE PUBLICATION bench FOR TABLE t5")
        slots = [f"s{i}" for i in range(2 * REPEAT)]
        for s in slots:
            pg.sql(f"SELECT pg_create_logical_replication_slot('{s}', 'pgoutput')")
        pg.sql(f"INSERT INTO t5 (customer, note, amount, at) SELECT g % 100000, 'order note ' || g, g / 100.0, now() "
               f"FROM generate_series(1, {n}) g")
        free = iter(slots)

        def cdc(binary):
            slot = next(free)
            text = (f"name: cdc-{slot}\nsource:\n  postgres_cdc: {{url: '{pg.url}', publication: bench, slot: {slot}, "
                    "snapshot: never}\nsink: null\nbatch: {size: 2000, linger: 5ms}\n")
            bench.FLOWGATE = binary
            return bench.run_until_out(work, f"cdc-{slot}", text, n)

        compare("Postgres CDC -> null (one transaction of rows)", n, cdc)
    finally:
        pg.stop()


CASES = {"engine": case_engine, "wasm": case_wasm, "avro": case_avro, "kafka": case_kafka, "cdc": case_cdc}

if __name__ == "__main__":
    chosen = sys.argv[3:] or list(CASES)
    version = lambda b: subprocess.run([b, "--version"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    print(f"machine: {os.cpu_count()} cores; before: {sys.argv[1]} ({version(sys.argv[1])}); "
          f"after: {sys.argv[2]} ({version(sys.argv[2])}); median of {REPEAT} runs each, alternating\n")
    print("| case | records | before records/s | after records/s | after / before |")
    print("|---|---:|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory() as work:
        for case in chosen:
            CASES[case](work)
