"""Benchmark driver: runs Flowgate and its baselines side by side, prints a table.

Each case runs REPEAT times; the median wall time is reported, with the CPU time
(user + system) and peak RSS of that run, as measured by /usr/bin/time.
"""
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile

FLOWGATE = os.environ["FLOWGATE_BIN"]
REPEAT = int(os.environ.get("REPEAT", "3"))


def measure(cmd, cwd, env=None, stdin=None):
    """(wall s, cpu s, peak RSS MiB) of one run of cmd."""
    tfile = os.path.join(cwd, "time.out")
    full_env = dict(os.environ, **(env or {}))
    with open(os.path.join(cwd, "stderr.log"), "w") as err:
        subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", tfile] + cmd, cwd=cwd, env=full_env,
                       stdout=subprocess.DEVNULL, stderr=err, stdin=stdin, check=True)
    wall, user, system, rss_kib = open(tfile).read().split()
    return float(wall), float(user) + float(system), int(rss_kib) / 1024


def env_ints(name, default):
    """The numbers in environment variable `name` (comma-separated), or in `default`."""
    return [int(x) for x in os.environ.get(name, default).split(",") if x]


def median_run(runs):
    runs = sorted(runs)
    return runs[len(runs) // 2]


def row(name, n, run, baseline=None):
    wall, cpu, rss = run
    rate = n / wall
    ratio = f"{baseline[0] / wall:.2f}x" if baseline else ""
    print(f"| {name} | {n:,} | {wall:.2f} | {rate:,.0f} | {cpu:.2f} | {rss:.0f} | {ratio} |", flush=True)
    return rate


def header(title):
    print(f"\n### {title}\n")
    print("| case | records | wall s | records/s | CPU s | peak RSS MiB | speed vs baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|", flush=True)


def bench_engine(work):
    count = int(os.environ.get("ENGINE_COUNT", "10000000"))
    header(f"generate -> null, {count:,} records of ~200 bytes, one core (taskset -c 0)")
    pipeline = os.path.abspath("pipelines/generate-to-null.yaml")
    for batch in (1000, 4096):
        runs = [measure(["taskset", "-c", "0", FLOWGATE, "run", "--progress", "0s", "--log", "warn", pipeline],
                        work, env={"COUNT": str(count), "BATCH_SIZE": str(batch)}) for _ in range(REPEAT)]
        row(f"flowgate, batch {batch}", count, median_run(runs))


def bench_sqlite(work):
    n = int(os.environ.get("SQLITE_ROWS", "1000000"))
    header(f"JSON lines -> SQLite, {n:,} rows of ~100 bytes, side by side with `sqlite3 .import --csv`")
    rng = random.Random(1)
    jsonl, csv = os.path.join(work, "rows.jsonl"), os.path.join(work, "rows.csv")
    with open(jsonl, "w") as j, open(csv, "w") as c:
        for i in range(n):
            name = "".join(rng.choice("abcdefghij") for _ in range(12))
            amount = round(rng.uniform(0, 10000), 2)
            created = 1_700_000_000_000 + i
            j.write(json.dumps({"id": i, "name": name, "email": f"{name}@example.com", "amount": amount,
                                "created": created}, separators=(",", ":")) + "\n")
            c.write(f"{i},{name},{name}@example.com,{amount},{created}\n")
    ddl = "CREATE TABLE t (id INTEGER, name TEXT, email TEXT, amount REAL, created INTEGER)"
    pipeline = os.path.join(work, "load.yaml")
    with open(pipeline, "w") as p:
        p.write(f"name: load\nsource:\n  file: {{path: {jsonl}}}\nsink:\n  sqlite: {{url: flowgate.db, table: t}}\n"
                "batch: {size: 10000}\n")

    def fresh(db):
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(os.path.join(work, db + suffix)):
                os.remove(os.path.join(work, db + suffix))
        subprocess.run(["sqlite3", os.path.join(work, db), ddl], check=True)
        shutil.rmtree(os.path.join(work, "state"), ignore_errors=True)

    cli, fg = [], []
    for _ in range(REPEAT):
        fresh("cli.db")
        cli.append(measure(["sqlite3", "cli.db", ".import --csv rows.csv t"], work))
        fresh("flowgate.db")
        fg.append(measure([FLOWGATE, "run", "--progress", "0s", "--log", "warn", "--state-dir", "state", pipeline],
                          work))
    rows = subprocess.run(["sqlite3", os.path.join(work, "flowgate.db"), "SELECT count(*) FROM t"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert rows == str(n), f"flowgate wrote {rows} rows"
    base = median_run(cli)
    row("sqlite3 .import --csv (baseline)", n, base)
    row("flowgate file -> sqlite (synchronous: full)", n, median_run(fg), base)


def bench_wasm(work):
    plugins = os.environ["FLOWGATE_PLUGINS"]
    bench = os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "examples", "wasm_bench")
    print("\n### The Wasm step on one core (taskset -c 0), ~237-byte records with two headers, epoch deadlines on\n",
          flush=True)
    subprocess.run(["taskset", "-c", "0", bench, plugins], check=True)

    print("\n### Second start with a cached plugin: `flowgate run` of one generated record through the plugin\n")
    print("| plugin | component size | first start (compiles) s | cached start, median of 5, s |")
    print("|---|---:|---:|---:|", flush=True)
    cache = os.path.join(work, "cache")
    for lang in ("rust", "python", "js"):
        wasm = os.path.join(plugins, f"{lang}-pii-mask.wasm")
        pipeline = os.path.join(work, f"start-{lang}.yaml")
        with open(pipeline, "w") as p:
            p.write(f"name: start\nsource:\n  generate: {{template: '{{\"email\":\"a@b.c\"}}', count: 1}}\n"
                    f"transforms:\n  - wasm: {{path: {wasm}}}\nsink: stdout\nbatch: {{linger: 0s}}\n")
        shutil.rmtree(cache, ignore_errors=True)
        cmd = [FLOWGATE, "run", "--progress", "0s", "--log", "warn", "--state-dir", "state", pipeline]
        env = {"FLOWGATE_CACHE_DIR": cache}
        first = measure(cmd, work, env=env)[0]
        warm = median_run([measure(cmd, work, env=env) for _ in range(5)])[0]
        print(f"| {lang}-pii-mask | {os.path.getsize(wasm) / 1e6:.1f} MB | {first:.2f} | {warm:.3f} |", flush=True)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait4(proc):
    """(cpu s, peak RSS MiB) of a finished child."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def metric(port, name):
    import urllib.request
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name))


def wait_port(port):
    import socket
    import time
    for _ in range(1000):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {port}")


def start_broker():
    """A loopback tansu broker with memory storage: (process, address, create-topic function)."""
    tools = os.environ["FLOWGATE_TOOLS"]
    port = free_port()
    brokers = f"127.0.0.1:{port}"
    url = f"tcp://{brokers}"
    broker = subprocess.Popen([os.path.join(tools, "bin", "tansu"), "broker", "--storage-engine", "memory://tansu/",
                               "--listener-url", url, "--advertised-listener-url", url],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)

    def topic(name, partitions=3):
        subprocess.run([os.path.join(tools, "bin", "tansu"), "topic", "create", "--broker", url,
                        "--partitions", str(partitions), name], check=True, stdout=subprocess.DEVNULL)
    return broker, brokers, topic


def run_until_out(work, name, pipeline_text, n, from_first_in=False):
    """Runs a pipeline until `flowgate_records_out_total` reaches n, then stops it
    with SIGTERM; the graceful stop waits for every acknowledgement and commits
    the positions, so the time runs until the process has exited. The clock
    starts at process start, or with `from_first_in` at the first record read
    (leaving out a consumer group's join). (wall s, CPU s, peak RSS MiB)."""
    import signal
    import time
    mport = free_port()
    pipeline = os.path.join(work, f"{name}.yaml")
    with open(pipeline, "w") as f:
        f.write(pipeline_text)
    start = None if from_first_in else time.monotonic()
    proc = subprocess.Popen([FLOWGATE, "run", "--progress", "0s", "--log", "warn", "--metrics-addr",
                             f"127.0.0.1:{mport}", "--state-dir", os.path.join(work, f"state-{name}"), pipeline],
                            cwd=work, stderr=open(os.path.join(work, f"{name}.log"), "w"))
    # Each look renders every metric, about a millisecond of Flowgate's CPU
    # (a Prometheus scrapes every 15 s or so). Looked at every 10 ms, that
    # was a tenth of its CPU in a profile; so once records come out, the next
    # look comes when half the time the rest should take, at the rate since
    # the first look that saw some, has passed.
    first = None
    while (out := metric(mport, "flowgate_records_out_total")) < n:
        if start is None and metric(mport, "flowgate_records_in_total") > 0:
            start = time.monotonic()
        if proc.poll() is not None:
            raise SystemExit(f"flowgate {name} exited early; see {name}.log")
        now = time.monotonic()
        if out and first is None:
            first = (now, out)
        rate = (out - first[1]) / (now - first[0]) if first and out > first[1] else 0.0
        time.sleep(min(max((n - out) / rate / 2, 0.005), 0.1) if rate else 0.01)
    start = start or time.monotonic()
    proc.send_signal(signal.SIGTERM)
    cpu, rss = wait4(proc)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"flowgate {name} failed; see {name}.log")
    return wall, cpu, rss


def bench_kafka(work):
    """Kafka -> PII mask -> Kafka on the loopback tansu broker, side by side with the
    raw librdkafka limit and the hand-written Python loops, in one run."""
    n = int(os.environ.get("KAFKA_COUNT", "1000000"))
    peer_n = int(os.environ.get("KAFKA_PEER_COUNT", str(n)))
    tools = os.environ["FLOWGATE_TOOLS"]
    peers = os.environ["FLOWGATE_PEERS"]
    python = os.path.join(tools, "venv", "bin", "python")
    rawkafka = os.path.join(os.environ["CARGO_TARGET_DIR"], "peers", "release", "rawkafka")
    broker, brokers, topic = start_broker()
    try:

        topic("in")
        out = subprocess.run([rawkafka, "produce", brokers, "in", str(n)], check=True, capture_output=True, text=True)
        print(f"\ninput: {out.stdout.strip()}")
        print(f"\n### Kafka -> Kafka on loopback tansu (memory storage), {n:,} JSON records of ~170 bytes, "
              "3 partitions; records/s from the first record consumed\n")
        print("| case | records | wall s | records/s | CPU s | peak RSS MiB | broker CPU s |")
        print("|---|---:|---:|---:|---:|---:|---:|", flush=True)

        def broker_cpu():
            fields = open(f"/proc/{broker.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        def peer(name, cmd, count):
            before = broker_cpu()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=work)
            line = proc.stdout.read().strip().splitlines()[-1]
            cpu, rss = wait4(proc)
            fields = dict(f.split("=") for f in line.split()[1:])
            rate = float(fields["rate"])
            print(f"| {name} | {count:,} | {float(fields['seconds']):.2f} | {rate:,.0f} | {cpu:.2f} | {rss:.0f} | "
                  f"{broker_cpu() - before:.2f} |", flush=True)
            return rate

        def flowgate(name, transforms):
            out_topic = f"out-{name}"
            topic(out_topic)
            text = (f"name: {name}\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [in]\n"
                    f"    group: bench-{name}\n    session_timeout: 6s\n{transforms}"
                    f"sink:\n  kafka:\n    brokers: {brokers}\n    topic: {out_topic}\n    linger: 20ms\n"
                    "batch: {size: 2000, linger: 5ms}\n")
            before = broker_cpu()
            # The Kafka sink counts a record out when librdkafka has it; the stop
            # waits for every delivery report (and leaving the group: conservative).
            seconds, cpu, rss = run_until_out(work, name, text, n, from_first_in=True)
            rate = n / seconds
            print(f"| flowgate: {name} | {n:,} | {seconds:.2f} | {rate:,.0f} | {cpu:.2f} | {rss:.0f} | "
                  f"{broker_cpu() - before:.2f} |", flush=True)
            return rate

        rates = {}
        for mode in ("pipe", "pipe-acked"):
            topic(f"out-raw-{mode}")
            rates[mode] = peer(f"raw librdkafka `{mode}`", [rawkafka, mode, brokers, "in", f"out-raw-{mode}", str(n)],
                               n)
        plugin = os.path.join(os.environ["FLOWGATE_PLUGINS"], "rust-pii-mask.wasm")
        rates["none"] = flowgate("no-transform", "")
        rates["wasm"] = flowgate("wasm-pii-mask", f"transforms:\n  - wasm:\n      path: {plugin}\n"
                                                  "      config: {fields: [email], flag: processed}\n")
        # The Python mask, with one and with two transform workers (this machine's cores).
        python_plugin = os.path.join(os.environ["FLOWGATE_PLUGINS"], "python-pii-mask.wasm")
        for workers in (1, 2):
            rates[f"python-{workers}"] = flowgate(
                f"python-mask-{workers}-workers",
                f"workers: {workers}\ntransforms:\n  - wasm:\n      path: {python_plugin}\n"
                "      config: {fields: [email], flag: processed}\n      timeout: 5s\n")
        for client in ("confluent-kafka", "aiokafka", "kafka-python"):
            topic(f"out-{client}")
            count = n if client == "confluent-kafka" else peer_n
            rates[client] = peer(f"Python loop, {client}", [python, os.path.join(peers, "kafka_python_loop.py"),
                                                             client, brokers, "in", f"out-{client}", str(count)], count)
        best = max(rates["pipe"], rates["pipe-acked"])
        print(f"\nFlowgate vs the better raw at-least-once mode: no transform {rates['none'] / best:.2f}x, "
              f"Wasm PII mask {rates['wasm'] / best:.2f}x; Wasm vs the confluent-kafka loop "
              f"{rates['wasm'] / rates['confluent-kafka']:.1f}x; the Python mask vs the confluent-kafka loop: "
              f"{rates['python-1'] / rates['confluent-kafka']:.2f}x with 1 worker, "
              f"{rates['python-2'] / rates['confluent-kafka']:.2f}x with 2", flush=True)
    finally:
        broker.terminate()
        broker.wait()


def bench_kafka_limit(work):
    """Kafka -> Kafka against the raw librdkafka limit, in interleaved rounds:
    no transform vs raw `pipe-acked`, the Wasm PII mask vs raw
    `pipe-acked-mask` (the same transform in native Rust). Flowgate's time runs
    from its first record consumed until it has exited after SIGTERM, sent once
    every record is out (so it covers the last delivery reports and offsets)."""
    n = int(os.environ.get("KAFKA_COUNT", "1000000"))
    # Seven: with three, one round in a slow phase of the machine moved the
    # median by a tenth.
    rounds = int(os.environ.get("KAFKA_ROUNDS", "7"))
    rawkafka = os.path.join(os.environ["CARGO_TARGET_DIR"], "peers", "release", "rawkafka")
    plugin = os.path.join(os.environ["FLOWGATE_PLUGINS"], "rust-pii-mask.wasm")
    broker, brokers, topic = start_broker()
    try:
        topic("in")
        subprocess.run([rawkafka, "produce", brokers, "in", str(n)], check=True, capture_output=True)
        print(f"\n### Kafka -> Kafka vs the raw librdkafka limit, {n:,} records, {rounds} interleaved rounds\n")
        print("| round | case | records/s | CPU s | CPU s per million | vs raw |")
        print("|---:|---|---:|---:|---:|---:|", flush=True)
        ratios = {"none": [], "mask": []}
        for r in range(1, rounds + 1):
            for case, mode, transforms in (
                ("none", "pipe-acked", ""),
                ("mask", "pipe-acked-mask", f"transforms:\n  - wasm:\n      path: {plugin}\n"
                                             "      config: {fields: [email], flag: processed}\n"),
            ):
                topic(f"out-raw-{case}-{r}")
                proc = subprocess.Popen([rawkafka, mode, brokers, "in", f"out-raw-{case}-{r}", str(n)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=work)
                out = proc.stdout.read().strip().splitlines()[-1]
                cpu, _ = wait4(proc)
                raw = float(dict(f.split("=") for f in out.split()[1:])["rate"])
                print(f"| {r} | raw librdkafka `{mode}` | {raw:,.0f} | {cpu:.2f} | {cpu / n * 1e6:.2f} | |", flush=True)
                topic(f"out-fg-{case}-{r}")
                name = f"limit-{case}-{r}"
                text = (f"name: {name}\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [in]\n"
                        f"    group: {name}\n    session_timeout: 6s\n{transforms}"
                        f"sink:\n  kafka:\n    brokers: {brokers}\n    topic: out-fg-{case}-{r}\n    linger: 20ms\n"
                        "batch: {size: 2000, linger: 5ms}\n")
                wall, cpu, _ = run_until_out(work, name, text, n, from_first_in=True)
                ratios[case].append(n / wall / raw)
                print(f"| {r} | flowgate, {'no transform' if case == 'none' else 'Wasm PII mask'} | {n / wall:,.0f} | "
                      f"{cpu:.2f} | {cpu / n * 1e6:.2f} | {n / wall / raw:.2f}x |", flush=True)
        print(f"\nMedian ratio: no transform {median_run(ratios['none']):.2f}x raw `pipe-acked`, Wasm PII mask "
              f"{median_run(ratios['mask']):.2f}x raw `pipe-acked-mask`", flush=True)
    finally:
        broker.terminate()
        broker.wait()


class Postgres:
    """A private PostgreSQL server for the benchmark: initdb into the work
    directory, logical WAL, fsync off (the published ceiling was measured so)."""

    def __init__(self, work):
        import glob
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
        self.bin = os.environ.get("FLOWGATE_PG_BIN", bins[-1] if bins else "")
        self.dir = tempfile.mkdtemp(prefix="pg-", dir=work)  # One per case: `bench.sh snapshot cdc` runs two.
        os.chmod(work, 0o777)
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        data = os.path.join(self.dir, "data")
        self.server(["initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8",
                     "--locale=C.UTF-8"])
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                    "wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\nfsync = off\n"
                    "full_page_writes = off\nshared_buffers = 256MB\nmax_wal_size = 4GB\n")
        self.server(["pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"), "-w", "start"])
        self.data = data

    def server(self, cmd):
        cmd = [os.path.join(self.bin, cmd[0])] + cmd[1:]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def client(self, tool):
        return [os.path.join(self.bin, tool), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]

    def sql(self, query):
        return subprocess.run(self.client("psql") + ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query,
                                                     "postgres"], check=True, capture_output=True,
                              text=True).stdout.strip()

    def stop(self):
        self.server(["pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"])


def bench_cdc(work):
    """Postgres -> Flowgate on the same WAL as pg_recvlogical, side by side: several
    slots created before the load, so every consumer decodes identical changes."""
    n = int(os.environ.get("CDC_COUNT", "200000"))
    pg = Postgres(work)
    broker, brokers, topic = start_broker()
    try:
        pg.sql("CREATE TABLE t5 (id bigserial PRIMARY KEY, customer int, note text, amount numeric(10,2), "
               "at timestamptz); CREATE PUBLICATION bench FOR TABLE t5")
        script = os.path.join(work, "insert.sql")
        with open(script, "w") as f:
            f.write("\\set c random(1, 100000)\nINSERT INTO t5 (customer, note, amount, at) "
                    "VALUES (:c, 'order note for customer ' || :c || ' shipped by express courier', :c / 100.0, now());\n")
        # Latency first, on a quiet server: the bulk loads below leave checkpoints
        # and autovacuum behind, which compete for the same two cores.
        latency(work, pg, brokers, topic)
        pg.sql("SELECT pg_drop_replication_slot('s_lat')")
        pg.sql("CHECKPOINT")
        rounds = int(os.environ.get("CDC_ROUNDS", "2"))
        for r in range(rounds):
            for kind in ("recv", "null", "kafka"):
                pg.sql(f"SELECT pg_create_logical_replication_slot('s_{kind}{r}', 'pgoutput')")
        subprocess.run(pg.client("pgbench") + ["-n", "-f", script, "-c", "4", "-j", "2", "-t", str(n // 4),
                                                 "postgres"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        end = pg.sql("SELECT pg_current_wal_lsn()")
        row_bytes = pg.sql("SELECT avg(pg_column_size(t5.*))::int FROM t5")
        print(f"\n### Postgres CDC: {n:,} single-row transactions of a 5-column table (~{row_bytes} bytes a row), "
              "decoded from the same WAL by each consumer\n")
        print("| case | changes | wall s | changes/s | CPU s | peak RSS MiB | vs pg_recvlogical |")
        print("|---|---:|---:|---:|---:|---:|---:|", flush=True)

        def recvlogical(slot):
            return measure(pg.client("pg_recvlogical") + ["-d", "postgres", "--slot", slot, "--start", "-o",
                                                          "proto_version=1", "-o", "publication_names=bench",
                                                          "-E", end, "--no-loop", "-f", "/dev/null"], work)

        def flowgate(name, slot, sink):
            return run_until_out(work, f"cdc-{name}",
                                 f"name: cdc-{name}\nsource:\n  postgres_cdc:\n    url: {pg.url}\n    publication: bench\n"
                                 f"    slot: {slot}\n    snapshot: never\nsink:\n{sink}\n"
                                 "batch: {size: 2000, linger: 5ms}\n", n)

        # Each round decodes the WAL once per consumer; the rounds show the spread.
        for r in range(rounds):
            recv = recvlogical(f"s_recv{r}")
            row(f"round {r + 1}: `pg_recvlogical` (pgoutput) to /dev/null: the decoding ceiling", n, recv)
            row(f"round {r + 1}: flowgate `postgres_cdc` -> null", n, flowgate(f"null{r}", f"s_null{r}", "  null: {}"),
                recv)
            topic(f"cdc{r}")
            kafka_sink = f"  kafka:\n    brokers: {brokers}\n    topic: cdc{r}\n    linger: 5ms"
            row(f"round {r + 1}: flowgate `postgres_cdc` -> Kafka (tansu)", n,
                flowgate(f"kafka{r}", f"s_kafka{r}", kafka_sink), recv)
    finally:
        broker.terminate()
        broker.wait()
        pg.stop()


def latency(work, pg, brokers, topic):
    """Commit-to-Kafka latency at a steady rate: a consumer compares each event's
    arrival with its commit time (`source.ts_ms`)."""
    import signal
    import time
    rate = int(os.environ.get("CDC_RATE", "5000"))
    seconds = int(os.environ.get("CDC_SECONDS", "30"))
    linger = os.environ.get("CDC_LINGER", "5ms")
    sink_linger = os.environ.get("CDC_SINK_LINGER", "5ms")
    topic("lat")
    pg.sql("SELECT pg_create_logical_replication_slot('s_lat', 'pgoutput')")
    pipeline = os.path.join(work, "cdc-lat.yaml")
    with open(pipeline, "w") as f:
        f.write(f"name: cdc-lat\nsource:\n  postgres_cdc:\n    url: {pg.url}\n    publication: bench\n"
                f"    slot: s_lat\n    snapshot: never\nsink:\n  kafka:\n    brokers: {brokers}\n    topic: lat\n"
                f"    linger: {sink_linger}\nbatch: {{size: 2000, linger: {linger}}}\n")
    proc = subprocess.Popen([FLOWGATE, "run", "--progress", "0s", "--log", "warn", "--state-dir",
                             os.path.join(work, "state-lat"), pipeline], cwd=work,
                            stderr=open(os.path.join(work, "cdc-lat.log"), "w"))
    python = os.path.join(os.environ["FLOWGATE_TOOLS"], "venv", "bin", "python")
    consumer = subprocess.Popen([python, "-c", LATENCY_CONSUMER, brokers, "lat", str(rate * seconds)],
                                stdout=subprocess.PIPE, text=True)
    time.sleep(3)  # The consumer joins; the pipeline streams.
    script = os.path.join(work, "insert.sql")
    subprocess.run(pg.client("pgbench") + ["-n", "-f", script, "-c", "2", "-j", "2", "-R", str(rate), "-T",
                                             str(seconds), "postgres"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    out = consumer.communicate(timeout=120)[0].strip()
    proc.send_signal(signal.SIGTERM)
    _, rss = wait4(proc)
    print(f"\ncommit -> Kafka latency at {rate:,} changes/s for {seconds} s (batch linger {linger}, Kafka linger "
          f"{sink_linger}): {out}; Flowgate peak RSS {rss:.0f} MiB", flush=True)


LATENCY_CONSUMER = """
import json, sys, time
from confluent_kafka import Consumer
brokers, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
from confluent_kafka import TopicPartition, OFFSET_BEGINNING
c = Consumer({"bootstrap.servers": brokers, "group.id": "latency", "fetch.wait.max.ms": 5})
c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
lat = []
idle = time.monotonic() + 20  # the load starts a few seconds after this
while len(lat) < n and time.monotonic() - idle < 10:
    m = c.poll(0.1)
    if m is None or m.error():
        continue
    idle = time.monotonic()
    lat.append(time.time() * 1000 - json.loads(m.value())["source"]["ts_ms"])
if not lat:
    sys.exit("no events arrived")
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"{len(lat):,} events, p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, max {lat[-1]:.1f} ms")
"""


class MariaDb:
    """A private MariaDB server for the benchmark."""

    def __init__(self, work):
        import time
        self.dir = os.path.join(work, "mariadb")
        os.makedirs(self.dir)
        self.port = free_port()
        self.url = f"mysql://root@127.0.0.1:{self.port}/bench"
        subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root", "--auth-root-authentication-method=normal",
                        "--skip-test-db", f"--datadir={self.dir}/data"], check=True, capture_output=True)
        self.proc = subprocess.Popen(["mariadbd", "--no-defaults", f"--datadir={self.dir}/data",
                                      f"--socket={self.dir}/sock", f"--port={self.port}", "--bind-address=127.0.0.1",
                                      "--user=root", "--skip-name-resolve", "--skip-log-bin", "--local-infile=1",
                                      "--innodb-buffer-pool-size=512M", "--innodb-log-file-size=256M",
                                      "--innodb-flush-log-at-trx-commit=1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            if subprocess.run(self.client() + ["-e", "SELECT 1"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        self.sql("CREATE DATABASE bench", db=None)

    def client(self):
        return ["mariadb", "-h", "127.0.0.1", "-P", str(self.port), "-u", "root", "--local-infile=1", "-N", "-B"]

    def sql(self, query, db="bench"):
        return subprocess.run(self.client() + ([db] if db else []) + ["-e", query], check=True, capture_output=True,
                              text=True).stdout.strip()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def bench_sql(work):
    """Kafka -> database, side by side with the database's own bulk load of the
    same rows from a file (COPY / LOAD DATA / sqlite3 .import): the limit.
    Postgres's upserts and change events also get the database's own floor
    for the same work (upserts two: the rows in id order and in the order
    the run wrote them). SQL_DATABASES (default postgres,mariadb,sqlite)
    picks the databases."""
    import csv
    import time
    n = int(os.environ.get("SQL_COUNT", "1000000"))
    databases = os.environ.get("SQL_DATABASES", "postgres,mariadb,sqlite").split(",")
    rawkafka = os.path.join(os.environ["CARGO_TARGET_DIR"], "peers", "release", "rawkafka")
    pg = Postgres(work) if "postgres" in databases else None
    maria = MariaDb(work) if "mariadb" in databases else None
    broker, brokers, topic = start_broker()
    try:
        topic("rows")
        subprocess.run([rawkafka, "produce", brokers, "rows", str(n)], check=True, capture_output=True)
        # The same rows as CSV, for the bulk loads.
        rows_csv = os.path.join(work, "rows.csv")
        with open(rows_csv, "w", newline="") as f:
            w = csv.writer(f)
            for i in range(n):
                w.writerow([i, f"user{i}@example.com", i * 0.5, "x" * 100])
        os.chmod(rows_csv, 0o644)
        ddl = "(id bigint, email text, amount double precision, note text)"
        keyed = "(id bigint PRIMARY KEY, email text, amount double precision, note text)"
        print(f"\n### Kafka -> database, {n:,} JSON records (id, email, amount, 100-byte note; ~150 bytes), "
              "batch 5000\n")
        print("| case | rows | wall s | rows/s | CPU s | peak RSS MiB | vs bulk load |")
        print("|---|---:|---:|---:|---:|---:|---:|", flush=True)

        def flowgate(name, kind, url, table, extra="", source="rows"):
            return run_until_out(work, f"sql-{name}",
                                 f"name: sql-{name}\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [{source}]\n"
                                 f"    group: sql-{name}\n    session_timeout: 6s\nsink:\n  {kind}:\n    url: {url}\n"
                                 f"    table: {table}\n    columns: [id, email, amount, note]\n{extra}"
                                 "batch: {size: 5000, linger: 20ms}\n", n, from_first_in=True)

        def timed(cmd):
            start = time.monotonic()
            subprocess.run(cmd, check=True, capture_output=True)
            return time.monotonic() - start, 0.0, 0.0

        if pg:
            # Change events for the same rows: each row created, then updated
            # (four in five) or deleted (one in five); key `id`.
            events = os.path.join(work, "events.jsonl")
            # The same changes as CSV files, for the database to apply itself.
            changes = {kind: os.path.join(work, f"{kind}.csv") for kind in ("creates", "updates", "deletes")}
            with open(events, "w") as f, open(changes["creates"], "w", newline="") as c, \
                    open(changes["updates"], "w", newline="") as u, open(changes["deletes"], "w", newline="") as d:
                half = n // 2
                out = {"c": csv.writer(c), "u": csv.writer(u)}
                for i in range(n):
                    k = i if i < half else i - half
                    after = {"id": k, "email": f"user{k}@example.com", "amount": i * 0.5, "note": "x" * 100}
                    # `before` always names the key, so the topic's key
                    # keeps each row's changes in one partition, in order.
                    if i < half:
                        ev = {"op": "c", "before": {"id": k}, "after": after}
                    elif k % 5:
                        ev = {"op": "u", "before": {"id": k}, "after": after}
                    else:
                        ev = {"op": "d", "before": {"id": k}, "after": None}
                    f.write(json.dumps(ev, separators=(",", ":")) + "\n")
                    if ev["op"] == "d":
                        d.write(f"{k}\n")
                    else:
                        out[ev["op"]].writerow([k, after["email"], after["amount"], after["note"]])
            for path in changes.values():
                os.chmod(path, 0o644)
            topic("events")
            fill = os.path.join(work, "events-fill.yaml")
            with open(fill, "w") as f:
                f.write(f"name: events-fill\nsource:\n  file: {{path: {events}}}\nsink:\n  kafka:\n"
                        f"    brokers: {brokers}\n    topic: events\n    key: '${{value.before.id}}'\n")
            subprocess.run([FLOWGATE, "run", "--progress", "0s", "--log", "warn", "--state-dir",
                            os.path.join(work, "state-fill"), fill], check=True, cwd=work)
            pg.sql(f"CREATE TABLE loaded {ddl}; CREATE TABLE loaded_eo {ddl}; "
                   f"CREATE TABLE upserted {keyed}; CREATE TABLE upserted_eo {keyed}; CREATE TABLE applied {keyed}")

            def copy(table):
                # Again before each case, into a table of its own: this
                # machine's speed drifts by half within a run, so each ratio
                # is taken against the limit measured just before it. A
                # checkpoint first, so that no timed one (every 5 minutes)
                # falls in a case and its dirty pages are not the next's.
                pg.sql(f"CHECKPOINT; CREATE TABLE {table} {ddl}")
                limit = timed(pg.client("psql") + ["-X", "-q", "-c", f"COPY {table} FROM '{rows_csv}' CSV",
                                                   "postgres"])
                row("Postgres `COPY` from a CSV file (server-side), just before: the limit", n, limit)
                return limit

            eo = "    delivery: effectively_once\n"
            upsert = "    mode: upsert\n    key: [id]\n"
            def keyed_copy():
                # Upserts of new keys at best insert into the keyed table, whose
                # index the limit's table has none of.
                pg.sql(f"CREATE TABLE copied_keyed {keyed}")
                return timed(pg.client("psql") + ["-X", "-q", "-c", f"COPY copied_keyed FROM '{rows_csv}' CSV",
                                                  "postgres"])

            def keyed_copy_as_written(table):
                # The same rows in the order the run wrote them (its table's
                # heap order). A consumer takes each partition in order, but
                # the three partitions' keys interleave, so the key's index
                # splits its pages in the middle instead of appending at its
                # right edge as with the id-ordered file: 1.75 s against 1.50 s
                # here, an index of 30 MB against 22.5 MB.
                path = os.path.join(work, f"{table}-as-written.csv")
                pg.sql(f"COPY (SELECT id, email, amount, note FROM {table} ORDER BY ctid) TO '{path}' CSV")
                pg.sql(f"CHECKPOINT; CREATE TABLE {table}_as_written {keyed}")
                return timed(pg.client("psql") + ["-X", "-q", "-c", f"COPY {table}_as_written FROM '{path}' CSV",
                                                  "postgres"])

            def applied_itself():
                # Postgres applying the same changes itself, from the files, the
                # way the sink does in one statement each: creates by `COPY`
                # into the keyed table, updates through a staging table and `ON
                # CONFLICT`, deletes by key. What they cost the database alone.
                pg.sql(f"CREATE TABLE applied_floor {keyed}")
                script = (f"COPY applied_floor FROM '{changes['creates']}' CSV; CREATE TEMP TABLE s {ddl}; "
                          f"COPY s FROM '{changes['updates']}' CSV; INSERT INTO applied_floor SELECT * FROM s "
                          "ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, amount = EXCLUDED.amount, "
                          f"note = EXCLUDED.note; CREATE TEMP TABLE k (id bigint); COPY k FROM "
                          f"'{changes['deletes']}' CSV; DELETE FROM applied_floor AS t USING k WHERE t.id = k.id")
                return timed(pg.client("psql") + ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", script, "postgres"])

            # The upsert and change-event cases also measure, next to the
            # limit, the database's own floor for the same work.
            floors = {
                "pg-up": ("Postgres `COPY` into a table keyed by `id` (server-side): the floor for new keys",
                          keyed_copy),
                "pg-cdc": ("Postgres applying the same changes itself from CSV files (server-side): their floor",
                           applied_itself),
            }
            for case, name, table, extra, source in (
                ("flowgate kafka -> postgres", "pg", "loaded", "", "rows"),
                ("flowgate kafka -> postgres, effectively-once", "pg-eo", "loaded_eo", eo, "rows"),
                ("flowgate kafka -> postgres, upsert (primary key id)", "pg-up", "upserted", upsert, "rows"),
                ("flowgate kafka -> postgres, upsert, effectively-once", "pg-up-eo", "upserted_eo", upsert + eo,
                 "rows"),
                ("flowgate kafka -> postgres, change events (c, then u or d per row)", "pg-cdc", "applied",
                 "    mode: cdc\n    key: [id]\n", "events"),
            ):
                limit = copy(f"copied_{table}")
                floor = None
                if name in floors:
                    floor = floors[name][1]()
                    row(floors[name][0], n, floor)
                ran = flowgate(name, "postgres", pg.url, table, extra, source)
                row(case, n, ran, limit)
                if floor:
                    row("the same flowgate run against that floor", n, ran, floor)
                if name == "pg-up":
                    as_written = keyed_copy_as_written(table)
                    row("Postgres `COPY` into a table keyed by `id` (server-side), the rows in the order that run "
                        "wrote them: the floor for that order", n, as_written)
                    row("the same flowgate run against that floor", n, ran, as_written)
            left = pg.sql("SELECT count(*) FROM applied")
            assert left == str(n // 2 - (n // 2 + 4) // 5), f"{left} rows after the change events"
            assert pg.sql("SELECT count(*) FROM applied_floor") == left
        if maria:
            maria.sql("CREATE TABLE copied (id BIGINT, email TEXT, amount DOUBLE, note TEXT); "
                      "CREATE TABLE loaded (id BIGINT, email TEXT, amount DOUBLE, note TEXT)")
            load = timed(maria.client() + ["bench", "-e", f"LOAD DATA LOCAL INFILE '{rows_csv}' INTO TABLE copied "
                                                          "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"'"])
            row("MariaDB `LOAD DATA LOCAL INFILE`: the limit", n, load)
            row("flowgate kafka -> mysql (MariaDB)", n, flowgate("maria", "mysql", maria.url, "loaded"), load)
        if "sqlite" in databases:
            db = os.path.join(work, "bench.db")
            subprocess.run(["sqlite3", db, f"CREATE TABLE copied {ddl}; CREATE TABLE loaded {ddl}"], check=True)
            imp = timed(["sqlite3", db, "-cmd", ".mode csv", f".import {rows_csv} copied"])
            row("sqlite3 `.import` of the CSV: the limit", n, imp)
            row("flowgate kafka -> sqlite", n, flowgate("sqlite", "sqlite", db, "loaded"), imp)
    finally:
        broker.terminate()
        broker.wait()
        if maria:
            maria.stop()
        if pg:
            pg.stop()


def bench_avro(work):
    bench = os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "examples", "avro_bench")
    records = os.path.join(work, "avro-records.jsonl")
    n = os.environ.get("AVRO_RECORDS", "1000000")
    port = free_port()
    registry = subprocess.Popen([FLOWGATE, "registry", "serve", "--listen", f"127.0.0.1:{port}", "--store",
                                 f"sqlite:{os.path.join(work, 'registry.db')}", "--log", "warn"], cwd=work)
    try:
        wait_port(port)
        print("\n### A 10-field record to Confluent-framed Avro and back, one core (taskset -c 0)\n",
              flush=True)
        subprocess.run(["taskset", "-c", "0", bench, n, records], check=True, stderr=subprocess.DEVNULL)
        python = os.path.join(os.environ["FLOWGATE_TOOLS"], "venv", "bin", "python")
        subprocess.run(["taskset", "-c", "0", python, "scripts/avro_peer.py", records, f"http://127.0.0.1:{port}",
                        os.environ.get("AVRO_PEER_RECORDS", "300000")], check=True)
        bench_avro_step(work, records.replace(".jsonl", ".avsc"))
        print("\n### The registry under wrk (2 threads, 64 connections, 10 s, on the same 2 cores)\n")
        print("| request | requests/s | mean latency |")
        print("|---|---:|---:|", flush=True)
        for name, path in (("schema by id", "/schemas/ids/1"), ("latest version", "/subjects/bench-value/versions/latest")):
            out = subprocess.run(["wrk", "-t2", "-c64", "-d10s", f"http://127.0.0.1:{port}{path}"], capture_output=True,
                                 text=True, check=True).stdout
            rate = next(l.split()[1] for l in out.splitlines() if l.startswith("Requests/sec"))
            latency = next(l.split()[1] for l in out.splitlines() if l.strip().startswith("Latency"))
            assert "Non-2xx" not in out, out
            print(f"| GET {path} ({name}) | {float(rate):,.0f} | {latency} |", flush=True)
    finally:
        registry.terminate()
        registry.wait()


def bench_avro_step(work, schema):
    count = int(os.environ.get("AVRO_PIPELINE_COUNT", "2000000"))
    header(f"generate -> null with and without an `avro` step, {count:,} 10-field records, one core (taskset -c 0)")
    template = ('{"id":${seq},"customer":"c-${rand_int(1,5000)}","email":"user${seq}@example.com",'
                '"amount":"${rand_int(1,999)}.${rand_int(10,99)}","currency":"${pick(EUR,USD,GBP)}",'
                '"quantity":${rand_int(1,9)},"price":${rand_float(1,500)},"created":"2024-05-01T12:00:00.123456Z",'
                '"shipped":true,"note":null}')
    base = None
    for step in ("", f"transforms:\n  - avro: {{schema: {{file: {schema}}}}}\n"):
        pipeline = os.path.join(work, "avro-step.yaml")
        with open(pipeline, "w") as p:
            p.write(f"name: avro-step\nsource:\n  generate: {{template: '{template}', count: {count}, seed: 7}}\n"
                    f"{step}sink: null\nbatch: {{size: 1000}}\n")
        runs = [measure(["taskset", "-c", "0", FLOWGATE, "run", "--progress", "0s", "--log", "warn", pipeline], work)
                for _ in range(REPEAT)]
        run = median_run(runs)
        row("with the avro step" if step else "without (baseline)", count, run, baseline=base)
        base = base or run


def bench_registry_bounds(work):
    """The registry with huge schemas: a compatibility check's time, reads
    while checks run, and memory per stored schema."""
    import threading
    import time
    import urllib.request

    port = free_port()
    registry = subprocess.Popen([FLOWGATE, "registry", "serve", "--listen", f"127.0.0.1:{port}", "--store",
                                 f"sqlite:{os.path.join(work, 'bounds.db')}", "--log", "warn",
                                 "--max-fields", "200000", "--max-schema-bytes", "8000000"], cwd=work)

    def schema(name, n, extra=""):
        fields = ",".join(f'{{"name":"f{i}","type":"long"}}' for i in range(n)) + extra
        return json.dumps({"schema": f'{{"type":"record","name":"{name}","fields":[{fields}]}}'}).encode()

    def post(path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        started = time.monotonic()
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
        return time.monotonic() - started

    def rss_mib():
        with open(f"/proc/{registry.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

    try:
        wait_port(port)
        n = 50_000
        print(f"\n### The registry with a {n:,}-field schema ({len(schema('R', n)) / 1e6:.1f} MB)\n")
        print("| case | result |")
        print("|---|---:|", flush=True)
        print(f"| register it | {post('/subjects/big-value/versions', schema('R', n)):.2f} s |", flush=True)
        v2 = schema("R", n, ',{"name":"added","type":"string","default":""}')
        print(f"| compatibility check of a new version against it (BACKWARD) | "
              f"{post('/compatibility/subjects/big-value/versions/latest', v2):.2f} s |", flush=True)
        stop = threading.Event()
        checks = [threading.Thread(target=lambda: [post('/compatibility/subjects/big-value/versions/latest', v2)
                                                   for _ in range(3)]) for _ in range(6)]
        for t in checks:
            t.start()
        worst = 0.0
        while any(t.is_alive() for t in checks):
            started = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/subjects", timeout=120) as r:
                r.read()
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.05)
        stop.set()
        print(f"| slowest GET /subjects while 6 clients run 18 such checks | {worst * 1000:.0f} ms |", flush=True)
        before = rss_mib()
        for i in range(20):
            post(f"/subjects/s{i}-value/versions", schema(f"S{i}", n))
        after = rss_mib()
        print(f"| RSS before / after storing 20 more such schemas ({20 * len(schema('R', n)) / 1e6:.0f} MB of text) | "
              f"{before:.0f} / {after:.0f} MiB |", flush=True)
    finally:
        registry.terminate()
        registry.wait()


def bench_snapshot(work):
    """A table's snapshot, side by side with `COPY (SELECT ...) TO STDOUT` of the
    same table (the limit: the server reading and sending every row): the
    exported snapshot (`initial_only`, one pass, one point in time) and the
    incremental one (key-ordered chunks while streaming), to null and to Kafka."""
    n = int(os.environ.get("SNAPSHOT_COUNT", "2000000"))
    pg = Postgres(work)
    broker, brokers, topic = start_broker()
    try:
        pg.sql("CREATE TABLE snap (id bigint PRIMARY KEY, customer int, note text, amount numeric(10,2), "
               f"at timestamptz); INSERT INTO snap SELECT g, g % 100000, 'order note for customer ' || g || "
               f"' shipped by express courier', g / 100.0, now() FROM generate_series(1, {n}) g")
        pg.sql("VACUUM ANALYZE snap")  # Alone: VACUUM cannot run in the transaction of a statement list.
        pg.sql("CHECKPOINT")
        row_bytes = pg.sql("SELECT avg(pg_column_size(snap.*))::int FROM snap")
        header(f"Postgres snapshot: one table of {n:,} rows (~{row_bytes} bytes a row)")
        copy = median_run([measure(pg.client("psql") + ["-X", "-q", "-c", "COPY (SELECT * FROM snap) TO STDOUT",
                                                         "-o", "/dev/null", "postgres"], work)
                           for _ in range(REPEAT)])
        row("`COPY (SELECT * FROM snap) TO STDOUT` to /dev/null: the limit", n, copy)
        runs = iter(range(1000))

        def exported(sink):
            r = next(runs)
            text = (f"name: snap{r}\nsource:\n  postgres_cdc:\n    url: {pg.url}\n    tables: [snap]\n"
                    f"    snapshot: initial_only\nsink:\n{sink}\nbatch: {{size: 2000, linger: 5ms}}\n")
            path = os.path.join(work, f"snap{r}.yaml")
            with open(path, "w") as f:
                f.write(text)
            return measure([FLOWGATE, "run", "--progress", "0s", "--log", "warn", "--state-dir",
                            os.path.join(work, f"state-snap{r}"), path], work)

        def incremental(sink, workers=1):
            r = next(runs)
            result = run_until_out(work, f"inc{r}",
                                   f"name: inc{r}\nsource:\n  postgres_cdc:\n    url: {pg.url}\n    tables: [snap]\n"
                                   f"    snapshot: {{mode: incremental, workers: {workers}}}\nsink:\n{sink}\n"
                                   "batch: {size: 2000, linger: 5ms}\n", n)
            pg.sql(f"SELECT pg_drop_replication_slot('flowgate_inc{r}')")  # Slots are few; each run makes one.
            return result

        row("flowgate exported snapshot (`initial_only`) -> null", n, median_run([exported("  null: {}")
                                                                                   for _ in range(REPEAT)]), copy)
        for workers in (1, 2):
            row(f"flowgate incremental snapshot, {workers} worker{'s' if workers > 1 else ''} (chunks of 16,384) -> null",
                n, median_run([incremental("  null: {}", workers) for _ in range(REPEAT)]), copy)
        topic("snap")
        kafka_sink = f"  kafka:\n    brokers: {brokers}\n    topic: snap\n    linger: 5ms"
        row("flowgate exported snapshot (`initial_only`) -> Kafka (tansu)", n, exported(kafka_sink), copy)
        for workers in (1, 2):
            row(f"flowgate incremental snapshot, {workers} worker{'s' if workers > 1 else ''} -> Kafka (tansu)", n,
                incremental(kafka_sink, workers), copy)
    finally:
        broker.terminate()
        broker.wait()
        pg.stop()


def bench_scale(work):
    """One process with many pipelines: start-up, memory and CPU at idle, and
    throughput when all are busy, for 10, 50 and 200 pipelines (a quarter each
    file -> null, generate -> null at 1 record/s, Kafka -> null, file -> SQLite)."""
    import glob
    import signal
    import time
    import urllib.request
    sizes = [int(x) for x in os.environ.get("SCALE_PIPELINES", "10,50,200").split(",")]
    lines = int(os.environ.get("SCALE_LINES", "20000"))
    broker, brokers, topic = start_broker()
    tick = os.sysconf("SC_CLK_TCK")

    def stat(pid):
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        rss = int(open(f"/proc/{pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        return (int(fields[11]) + int(fields[12])) / tick, rss

    print("\n### Many pipelines in one `flowgate run`: a quarter each file -> null, generate (1/s) -> null, "
          "Kafka -> null, file -> SQLite\n")
    print("| pipelines | start-up s (to /health/ready) | RSS at idle MiB | RSS per pipeline MiB | idle CPU % of a core "
          f"| busy: {lines:,} lines into each file pipeline, records/s | CPU s busy |")
    print("|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    base = None
    try:
        for n in sizes:
            d = os.path.join(work, f"scale-{n}")
            os.makedirs(d, exist_ok=True)
            files = []
            for i in range(n):
                kind = i % 4
                if kind == 2:
                    topic(f"scale-{n}-{i}", 1)
                    source = f"  kafka: {{brokers: '{brokers}', topics: [scale-{n}-{i}], group: scale-{n}-{i}}}\n"
                elif kind == 1:
                    source = "  generate: {template: '{\"n\":${seq}}', rate: 1}\n"
                else:
                    path = os.path.join(d, f"in-{i}.jsonl")
                    open(path, "w").close()
                    files.append(path)
                    source = f"  file: {{path: {path}, follow: true}}\n"
                sink = f"  sqlite: {{url: {d}/out-{i}.db, table: t, create_table: true}}\n" if kind == 3 else "  null: {}\n"
                with open(os.path.join(d, f"p{i:03}.yaml"), "w") as f:
                    f.write(f"name: p{i:03}\nsource:\n{source}sink:\n{sink}")
            mport = free_port()
            start = time.monotonic()
            proc = subprocess.Popen([FLOWGATE, "run", "--progress", "0s", "--log", "warn", "--metrics-addr",
                                     f"127.0.0.1:{mport}", "--state-dir", os.path.join(d, "state")]
                                    + sorted(glob.glob(os.path.join(d, "p*.yaml"))),
                                    cwd=work, stderr=open(os.path.join(d, "log"), "w"))
            while True:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{mport}/health/ready", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None:
                    raise SystemExit(f"flowgate with {n} pipelines exited; see {d}/log")
                time.sleep(0.02)
            startup = time.monotonic() - start
            time.sleep(5)
            cpu0, _ = stat(proc.pid)
            time.sleep(10)
            cpu1, rss = stat(proc.pid)
            idle = (cpu1 - cpu0) / 10 * 100
            base = base or (n, rss)
            per = (rss - base[1]) / (n - base[0]) if n > base[0] else rss / n
            # Busy: every file pipeline gets `lines` records at once.
            out0 = metric(mport, "flowgate_records_out_total")
            record = '{"id":1,"email":"someone@example.com","note":"' + "x" * 100 + '"}\n'
            t0 = time.monotonic()
            for path in files:
                with open(path, "a") as f:
                    f.write(record * lines)
            want = out0 + lines * len(files)
            while metric(mport, "flowgate_records_out_total") < want:
                time.sleep(0.02)
            busy = time.monotonic() - t0
            cpu2, _ = stat(proc.pid)
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            print(f"| {n} | {startup:.2f} | {rss:.0f} | {per:.2f} | {idle:.2f} | {lines * len(files) / busy:,.0f} | "
                  f"{cpu2 - cpu1:.2f} |", flush=True)
    finally:
        broker.terminate()
        broker.wait()


def bench_wide(work):
    """Costs that grow with partitions and tables: a Kafka topic of 10, 100 and
    1,000 partitions read to the end; a SQL sink filling 10, 100 and 500 tables
    from a `table` template; a Postgres CDC pipeline capturing 10, 100 and 500
    tables (initial snapshot, then changes to every table)."""
    import time
    import urllib.request
    n = int(os.environ.get("WIDE_RECORDS", "200000"))
    rawkafka = os.path.join(os.environ["CARGO_TARGET_DIR"], "peers", "release", "rawkafka")
    broker, brokers, topic = start_broker()
    pg = Postgres(work)

    def run(name, text, count):
        return run_until_out(work, name, text, count, from_first_in=True)

    def run_to_end(name, text):
        pipeline = os.path.join(work, f"{name}.yaml")
        with open(pipeline, "w") as f:
            f.write(text)
        return measure([FLOWGATE, "run", "--progress", "0s", "--log", "warn", "--state-dir",
                        os.path.join(work, f"state-{name}"), pipeline], work)

    print(f"\n### Wide: {n:,} records over 10 to 1,000 partitions or 10 to 500 tables\n")
    print("| case | width | records | wall s | records/s | CPU s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|", flush=True)

    def line(case, width, count, run):
        wall, cpu, rss = run
        print(f"| {case} | {width:,} | {count:,} | {wall:.2f} | {count / wall:,.0f} | {cpu:.2f} | {rss:.0f} |",
              flush=True)

    try:
        for parts in env_ints("WIDE_PARTITIONS", "10,100,1000"):
            topic(f"wide{parts}", parts)
            subprocess.run([rawkafka, "produce", brokers, f"wide{parts}", str(n)], check=True, capture_output=True)
            line("Kafka (partitions) -> null", parts, n, run(
                f"wide-k{parts}", f"name: wide-k{parts}\nsource:\n  kafka:\n    brokers: {brokers}\n"
                f"    topics: [wide{parts}]\n    group: wide-k{parts}\n    session_timeout: 6s\nsink:\n  null: {{}}\n",
                n))
        for topics in env_ints("WIDE_TOPICS", "10,100,1000"):
            for i in range(topics):
                topic(f"fan{topics}_{i}", 1)
            line("generate -> Kafka, `topic: fan_${value.t}` over 1-partition topics", topics, n, run_to_end(
                f"wide-fan{topics}",
                f"name: wide-fan{topics}\nsource:\n  generate: {{template: '{{\"t\":${{rand_int(0,{topics - 1})}},"
                f"\"n\":${{seq}}}}', count: {n}}}\nsink:\n  kafka:\n    brokers: {brokers}\n"
                f"    topic: 'fan{topics}_${{value.t}}'\n"))
        records = os.path.join(work, "wide.jsonl")
        for tables in env_ints("WIDE_SQL_TABLES", "10,100,500"):
            with open(records, "w") as f:
                for i in range(n):
                    f.write(json.dumps({"t": i % tables, "id": i, "email": f"user{i}@example.com",
                                        "note": "x" * 100}) + "\n")
            line("file -> Postgres, `table: wide_${value.t}` (created from the first record)", tables, n, run_to_end(
                f"wide-sql{tables}", f"name: wide-sql{tables}\nsource:\n  file: {{path: {records}}}\nsink:\n"
                f"  postgres:\n    url: {pg.url}\n    table: wide{tables}_${{value.t}}\n    create_table: true\n"
                "batch: {size: 5000}\n"))
        for tables in env_ints("WIDE_CDC_TABLES", "10,100,500"):
            names = [f"cdc{tables}_{i}" for i in range(tables)]
            per = max(1, n // 2 // tables)
            ddl = "; ".join(f"CREATE TABLE {t} (id bigint PRIMARY KEY, email text, note text); "
                            f"INSERT INTO {t} SELECT g, 'user' || g || '@example.com', repeat('x', 100) "
                            f"FROM generate_series(1, {per}) g" for t in names)
            pg.sql(ddl)
            # After the snapshot: one more row in every table, while it streams.
            text = (f"name: wide-cdc{tables}\nsource:\n  postgres_cdc:\n    url: {pg.url}\n"
                    f"    tables: [{', '.join(names)}]\n    snapshot: initial\nsink:\n  null: {{}}\n"
                    "batch: {size: 2000, linger: 5ms}\n")
            line("Postgres CDC (tables, initial snapshot of each) -> null", tables, per * tables,
                 run(f"wide-cdc{tables}", text, per * tables))
            # The same tables again into Kafka as Avro: a schema per table,
            # registered in the embedded registry, a topic per table.
            for t in names:
                topic(f"public.{t}", 1)
            text = (f"name: wide-avro{tables}\nsource:\n  postgres_cdc:\n    url: {pg.url}\n"
                    f"    tables: [{', '.join(names)}]\n    snapshot: initial\n    slot: wide_avro{tables}\n"
                    f"sink:\n  kafka:\n    brokers: {brokers}\n    topic: '${{meta.schema}}.${{meta.table}}'\n"
                    f"    format: avro\nregistry:\n  serve:\n    listen: 127.0.0.1:{free_port()}\n"
                    "batch: {size: 2000, linger: 5ms}\n")
            line("Postgres CDC (tables, initial snapshot of each) -> Kafka, Avro, a schema and topic per table",
                 tables, per * tables, run(f"wide-avro{tables}", text, per * tables))
    finally:
        broker.terminate()
        broker.wait()
        pg.stop()


def bench_workers(work):
    """generate -> Wasm PII mask -> null with 1 and 2 transform workers
    (`workers:`), Rust and Python plugins, rounds interleaved."""
    plugins = os.environ["FLOWGATE_PLUGINS"]
    counts = {"rust": int(os.environ.get("WORKERS_COUNT", "2000000")),
              "python": int(os.environ.get("WORKERS_PY_COUNT", "200000"))}
    header("generate -> Wasm PII mask -> null, ~200-byte records, by transform workers (2 cores)")
    template = ('{"id":${seq},"user":"user-${rand_int(1,1000000)}","email":"someone.${rand_str(8)}@example.com",'
                '"amount":${rand_float(0,10000)},"note":"${rand_str(72)}"}')
    scaling = []
    for lang, n in counts.items():
        wasm = os.path.join(plugins, f"{lang}-pii-mask.wasm")
        runs = {1: [], 2: []}
        for _ in range(REPEAT):
            for workers in (1, 2):
                pipeline = os.path.join(work, f"workers-{lang}-{workers}.yaml")
                with open(pipeline, "w") as f:
                    f.write(f"name: workers\nsource:\n  generate:\n    template: '{template}'\n    count: {n}\n"
                            f"    seed: 7\ntransforms:\n  - wasm:\n      path: {wasm}\n"
                            "      config: {fields: [email], flag: processed}\n      timeout: 5s\n"
                            f"sink: null\nbatch: {{size: 1000}}\nworkers: {workers}\n")
                runs[workers].append(measure([FLOWGATE, "run", "--progress", "0s", "--log", "warn", "--state-dir",
                                              os.path.join(work, "state"), pipeline], work))
        one, two = median_run(runs[1]), median_run(runs[2])
        row(f"{lang} mask, 1 worker", n, one)
        row(f"{lang} mask, 2 workers", n, two, one)
        scaling.append(f"{lang}: {n / one[1]:,.0f} records per CPU-second with 1 worker, {n / two[1]:,.0f} with 2")
    print("\n" + "; ".join(scaling), flush=True)


COMMITTED = """
import sys, time
from confluent_kafka import Consumer, TopicPartition
brokers, group, topic, partitions, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
c = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
tps = [TopicPartition(topic, p) for p in range(partitions)]
while sum(max(t.offset, 0) for t in c.committed(tps, timeout=10)) < n:
    time.sleep(0.05)
"""


def bench_metrics(work):
    """What metrics cost: the same pipelines with and without --metrics-addr,
    rounds interleaved. The Kafka runs end when the group's committed offsets
    reach the input's end (asked of the broker, the same way in both modes:
    without a metrics address there is no counter to poll)."""
    import signal
    import time
    count = int(os.environ.get("ENGINE_COUNT", "10000000"))
    n = int(os.environ.get("KAFKA_COUNT", "1000000"))
    header(f"metrics off vs on: generate -> null, {count:,} records of ~200 bytes, one core (taskset -c 0)")
    pipeline = os.path.abspath("pipelines/generate-to-null.yaml")
    base = ["taskset", "-c", "0", FLOWGATE, "run", "--progress", "0s", "--log", "warn", pipeline]
    runs = {"off": [], "on": []}
    for _ in range(REPEAT):
        for mode in ("off", "on"):
            extra = ["--metrics-addr", "127.0.0.1:0"] if mode == "on" else []
            runs[mode].append(measure(base + extra, work, env={"COUNT": str(count)}))
    off = median_run(runs["off"])
    row("flowgate, metrics off", count, off)
    engine = row("flowgate, metrics on (`--metrics-addr`)", count, median_run(runs["on"]), off) / (count / off[0])

    tools = os.environ["FLOWGATE_TOOLS"]
    python = os.path.join(tools, "venv", "bin", "python")
    rawkafka = os.path.join(os.environ["CARGO_TARGET_DIR"], "peers", "release", "rawkafka")
    poller = os.path.join(work, "committed.py")
    with open(poller, "w") as f:
        f.write(COMMITTED)
    broker, brokers, topic = start_broker()
    try:
        topic("in")
        subprocess.run([rawkafka, "produce", brokers, "in", str(n)], check=True, capture_output=True)
        header(f"metrics off vs on: Kafka -> Kafka on loopback tansu, {n:,} records of ~170 bytes, 3 partitions; "
               "until the group has committed them all, graceful stop included")
        kruns = {"off": [], "on": []}
        for r in range(REPEAT):
            for mode in ("off", "on"):
                name = f"metrics-{mode}-{r}"
                topic(f"out-{name}")
                text = (f"name: {name}\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [in]\n"
                        f"    group: {name}\n    session_timeout: 6s\n"
                        f"sink:\n  kafka:\n    brokers: {brokers}\n    topic: out-{name}\n    linger: 20ms\n"
                        "batch: {size: 2000, linger: 5ms}\n")
                path = os.path.join(work, f"{name}.yaml")
                with open(path, "w") as f:
                    f.write(text)
                extra = ["--metrics-addr", "127.0.0.1:0"] if mode == "on" else []
                start = time.monotonic()
                proc = subprocess.Popen([FLOWGATE, "run", "--progress", "0s", "--log", "warn", "--state-dir",
                                         os.path.join(work, f"state-{name}"), path] + extra,
                                        cwd=work, stderr=open(os.path.join(work, f"{name}.log"), "w"))
                subprocess.run([python, poller, brokers, name, "in", "3", str(n)], check=True)
                proc.send_signal(signal.SIGTERM)
                cpu, rss = wait4(proc)
                kruns[mode].append((time.monotonic() - start, cpu, rss))
        koff = median_run(kruns["off"])
        row("flowgate Kafka -> Kafka, metrics off", n, koff)
        kafka = row("flowgate Kafka -> Kafka, metrics on", n, median_run(kruns["on"]), koff) / (n / koff[0])
    finally:
        broker.terminate()
        broker.wait()
    print(f"\nmetrics on vs off: generate -> null {engine:.3f}x, Kafka -> Kafka {kafka:.3f}x", flush=True)


CASES = {"engine": bench_engine, "sqlite": bench_sqlite, "wasm": bench_wasm, "kafka": bench_kafka, "cdc": bench_cdc,
         "snapshot": bench_snapshot, "sql": bench_sql, "avro": bench_avro, "registry": bench_registry_bounds, "metrics": bench_metrics,
         "workers": bench_workers, "scale": bench_scale,
         "wide": bench_wide, "kafka-limit": bench_kafka_limit}

if __name__ == "__main__":
    chosen = sys.argv[1:] or list(CASES)
    print(f"machine: {os.cpu_count()} cores; flowgate {subprocess.run([FLOWGATE, '--version'], capture_output=True, text=True).stdout.strip()}; median of {REPEAT} runs")
    with tempfile.TemporaryDirectory() as work:
        for case in chosen:
            CASES[case](work)
