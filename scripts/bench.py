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


def bench_kafka(work):
    """Kafka -> PII mask -> Kafka on the loopback tansu broker, side by side with the
    raw librdkafka limit and the hand-written Python loops, in one run."""
    import signal
    import socket
    import time
    n = int(os.environ.get("KAFKA_COUNT", "1000000"))
    peer_n = int(os.environ.get("KAFKA_PEER_COUNT", str(n)))
    tools = os.environ["FLOWGATE_TOOLS"]
    peers = os.environ["FLOWGATE_PEERS"]
    python = os.path.join(tools, "venv", "bin", "python")
    rawkafka = os.path.join(os.environ["CARGO_TARGET_DIR"], "peers", "release", "rawkafka")
    port = free_port()
    brokers = f"127.0.0.1:{port}"
    url = f"tcp://{brokers}"
    broker = subprocess.Popen([os.path.join(tools, "bin", "tansu"), "broker", "--storage-engine", "memory://tansu/",
                               "--listener-url", url, "--advertised-listener-url", url],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)

        def topic(name):
            subprocess.run([os.path.join(tools, "bin", "tansu"), "topic", "create", "--broker", url,
                            "--partitions", "3", name], check=True, stdout=subprocess.DEVNULL)

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
            mport = free_port()
            pipeline = os.path.join(work, f"{name}.yaml")
            with open(pipeline, "w") as f:
                f.write(f"name: {name}\nsource:\n  kafka:\n    brokers: {brokers}\n    topics: [in]\n"
                        f"    group: bench-{name}\n    session_timeout: 6s\n{transforms}"
                        f"sink:\n  kafka:\n    brokers: {brokers}\n    topic: {out_topic}\n    linger: 20ms\n"
                        "batch: {size: 2000, linger: 5ms}\n")
            before = broker_cpu()
            proc = subprocess.Popen([FLOWGATE, "run", "--progress", "0s", "--log", "warn", "--metrics-addr",
                                     f"127.0.0.1:{mport}", "--state-dir", os.path.join(work, "state"), pipeline],
                                    cwd=work, stderr=open(os.path.join(work, f"{name}.log"), "w"))
            start = None
            while True:
                got_in = metric(mport, "flowgate_records_in_total")
                if start is None and got_in > 0:
                    start = time.monotonic()
                if metric(mport, "flowgate_records_out_total") >= n:
                    break
                if proc.poll() is not None:
                    raise SystemExit(f"flowgate {name} exited early; see {name}.log")
                time.sleep(0.01)
            # The Kafka sink counts a record out when librdkafka has it; stopping
            # waits for every delivery report and commits the offsets, so the
            # time runs until then (exit includes leaving the group: conservative).
            proc.send_signal(signal.SIGTERM)
            cpu, rss = wait4(proc)
            seconds = time.monotonic() - start
            if proc.returncode != 0:
                raise SystemExit(f"flowgate {name} failed; see {name}.log")
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
        for client in ("confluent-kafka", "aiokafka", "kafka-python"):
            topic(f"out-{client}")
            count = n if client == "confluent-kafka" else peer_n
            rates[client] = peer(f"Python loop, {client}", [python, os.path.join(peers, "kafka_python_loop.py"),
                                                             client, brokers, "in", f"out-{client}", str(count)], count)
        best = max(rates["pipe"], rates["pipe-acked"])
        print(f"\nFlowgate vs the better raw at-least-once mode: no transform {rates['none'] / best:.2f}x, "
              f"Wasm PII mask {rates['wasm'] / best:.2f}x; Wasm vs the confluent-kafka loop "
              f"{rates['wasm'] / rates['confluent-kafka']:.1f}x", flush=True)
    finally:
        broker.terminate()
        broker.wait()


CASES = {"engine": bench_engine, "sqlite": bench_sqlite, "wasm": bench_wasm, "kafka": bench_kafka}

if __name__ == "__main__":
    chosen = sys.argv[1:] or list(CASES)
    print(f"machine: {os.cpu_count()} cores; flowgate {subprocess.run([FLOWGATE, '--version'], capture_output=True, text=True).stdout.strip()}; median of {REPEAT} runs")
    with tempfile.TemporaryDirectory() as work:
        for case in chosen:
            CASES[case](work)
