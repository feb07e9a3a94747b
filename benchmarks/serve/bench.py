"""`edge-vlm serve` measured: requests/s and latency against concurrent clients, and the server's overhead over calling
the runtime in-process.

    python benchmarks/serve/bench.py --bundle B --label builtin-int4 [--requests 200] [--concurrency 1,4,16]
        [--out benchmarks/serve/results/NAME.json]

Workloads (each request asks one question about a 480x480 JPEG, non-streamed, greedy):
  cached  the same picture every time: the server reuses its prefix (vision + prefix prefill skipped), so a request
          costs what `engine.stream` on a prepared image costs in-process, plus the serving;
  new     a different picture every time: vision and prefix prefill on every request, in both.
The in-process baseline is the same engine in this process: `answer(engine, prepared, q)` (cached) or
`prepare_image(picture)` + `answer` (new; the picture already decoded). The server runs as `edge-vlm serve --bundle B`
in its own process; clients are threads with one keep-alive HTTP connection each (http.client: the lightest client,
so that the client's own cost stays small), requests pre-encoded before the clock starts.

Overhead, two ways: paired = each request's latency (one client) minus the time the server spent in the model on
that same request (`edge_vlm.timings_ms`: total - queue), so the load of other jobs on a shared machine cancels
out; unpaired = p50 latency against the server - p50 of the in-process call, in alternating rounds (skipped with
--no-in-process, which spares a second copy of the model). Prints a table and ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

QUESTION = "What color is the square?"


def pictures(count: int, seed: int) -> list[bytes]:
    """`count` different synthetic scenes as 480x480 JPEG bytes (a camera-sized frame; the model resizes it)."""
    from edge_vlm.data.scene import draw_scene, sample_scene

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        draw_scene(sample_scene(rng), 480).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


MAX_TOKENS: int | None = None  # --max-tokens: sent with every request and used in-process alike


def body(jpeg: bytes) -> bytes:
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    request = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]}]}
    if MAX_TOKENS is not None:
        request["max_tokens"] = MAX_TOKENS
    return json.dumps(request).encode()


def config():
    from edge_vlm.engine import GenerationConfig

    return GenerationConfig() if MAX_TOKENS is None else GenerationConfig(max_new_tokens=MAX_TOKENS)


class Client:
    """One keep-alive connection (opened again when the server closed it: uvicorn closes a connection idle for 5 s)."""

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def ask(self, payload: bytes) -> tuple[float, dict]:
        try:
            return self._ask(payload)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            return self._ask(payload)

    def _ask(self, payload: bytes) -> tuple[float, dict]:
        start = time.perf_counter()
        self.connection.request("POST", "/v1/chat/completions", body=payload,
                                headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - start) * 1e3
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        return elapsed, json.loads(data)


def start_server(bundle: str, threads: int | None, cache_mb: float, log) -> tuple[subprocess.Popen, int, str]:
    """`edge-vlm serve` on a free port, its stderr to `log` (an open file); (process, port, command)."""
    command = [sys.executable, "-m", "edge_vlm.cli.main", "serve", "--bundle", bundle, "--port", "0",
               "--image-cache-mb", f"{cache_mb:g}"]
    if threads:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"edge-vlm serve exited: {log.read()}")
        log.seek(0)
        for line in log.read().splitlines():
            if " on http://" in line:
                url = line.split(" on ")[1].split()[0]
                try:
                    urllib.request.urlopen(url + "/health", timeout=5).read()
                    return process, int(url.rsplit(":", 1)[1]), shlex.join(command)
                except OSError:
                    pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("edge-vlm serve did not start")


def percentiles(values: list[float]) -> dict:
    array = np.asarray(values)
    return {"p50_ms": float(np.percentile(array, 50)), "p95_ms": float(np.percentile(array, 95)),
            "mean_ms": float(array.mean()), "n": int(array.size)}


def model_ms(reply: dict) -> float:
    """The time the request spent with the model, as the server measured it (its job's total minus the queue wait):
    the same engine calls an in-process caller makes."""
    timings = reply["edge_vlm"]["timings_ms"]
    return timings["total_ms"] - timings["queue_ms"]


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system, all threads) of a process so far: this one when `pid` is None."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def overhead(engine, port: int, jpegs: list[bytes], rounds: int, per_round: int, new: bool,
             server_pid: int) -> dict:
    """The serving's cost, two ways. Paired: for each request of one client, its latency minus the time the server
    spent in the model on it (robust to other jobs' load: both come from the same request). Unpaired (when `engine`
    is given): alternating rounds of in-process calls and server requests, p50 against p50; and in CPU time per
    request (the server process's against this process's during its in-process calls), which waiting for a core on
    a busy machine does not inflate. `new`: every server request sends a picture it has not seen (len(jpegs) >=
    rounds * per_round); `jpegs[0]` otherwise."""
    from PIL import Image

    from edge_vlm.engine import answer

    client = Client(port)
    local, served, paired, spent = [], [], [], []
    local_cpu = served_cpu = 0.0
    decoded = [Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs[:per_round]] if engine else []
    prepared = engine.prepare_image(decoded[0]) if engine and not new else None
    payloads = iter([body(j) for j in jpegs]) if new else None
    cached = body(jpegs[0])
    if not new:
        client.ask(cached)  # the server prepares the picture once; the requests measured reuse it
    for _ in range(rounds):
        before = cpu_s()
        for index in range(per_round if engine else 0):
            start = time.perf_counter()
            image_prepared = engine.prepare_image(decoded[index]) if new else prepared
            answer(engine, image_prepared, QUESTION, config=config())
            local.append((time.perf_counter() - start) * 1e3)
        local_cpu += cpu_s() - before
        before = cpu_s(server_pid)
        for _ in range(per_round):
            elapsed, reply = client.ask(next(payloads) if new else cached)
            served.append(elapsed)
            spent.append(model_ms(reply))
            paired.append(elapsed - spent[-1])
        served_cpu += cpu_s(server_pid) - before
    result = {"server": percentiles(served), "model_in_server": percentiles(spent), "paired": percentiles(paired)}
    result["paired_overhead_ms_p50"] = result["paired"]["p50_ms"]
    result["paired_overhead_pct_p50"] = 100 * result["paired"]["p50_ms"] / result["model_in_server"]["p50_ms"]
    result["server_cpu_ms_per_request"] = 1e3 * served_cpu / len(served)
    if engine:
        result["in_process_cpu_ms_per_call"] = 1e3 * local_cpu / len(local)
        result["cpu_overhead_ms"] = result["server_cpu_ms_per_request"] - result["in_process_cpu_ms_per_call"]
        result["in_process"] = percentiles(local)
        result["overhead_ms_p50"] = result["server"]["p50_ms"] - result["in_process"]["p50_ms"]
        result["overhead_pct_p50"] = 100 * result["overhead_ms_p50"] / result["in_process"]["p50_ms"]
    return result


def concurrent(port: int, payloads: list[bytes], clients: int, total: int) -> dict:
    """`clients` threads sharing `total` requests: requests/s, latency percentiles, and the time each request spent
    outside its job in the server (HTTP, JSON, picture bytes; not the queue wait)."""
    latencies: list[float] = []
    outside: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def work():
        client = Client(port)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            try:
                elapsed, reply = client.ask(payloads[index % len(payloads)])
            except Exception as exc:  # counted and shown: a benchmark with errors is not a clean one
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                client = Client(port)  # the connection's state is unknown after a failure
                continue
            with lock:
                latencies.append(elapsed)
                outside.append(elapsed - reply["edge_vlm"]["timings_ms"]["total_ms"])

    threads = [threading.Thread(target=work) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    row = {"clients": clients, "requests": len(latencies), "errors": len(errors), "error_examples": errors[:3],
           "requests_per_s": len(latencies) / wall}
    if latencies:
        row.update(percentiles(latencies), outside_job_ms_p50=float(np.percentile(outside, 50)))
    return row


def _random_weights(bundle: str) -> bool:
    from edge_vlm.runtime.bundle import read_manifest

    return bool(read_manifest(bundle).get("source", {}).get("random_weights"))


def machine() -> dict:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
            "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--label", required=True, help="what the bundle is (say 'random weights' if it is)")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level and workload")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds of the overhead measurement")
    parser.add_argument("--threads", type=int, help="intra-op threads, in-process and in the server alike")
    parser.add_argument("--max-tokens", type=int, help="answer length limit (random weights rarely end an answer: "
                        "give one); default the server's, 128")
    parser.add_argument("--workloads", default="cached,new", help="cached, new or both (default both)")
    parser.add_argument("--no-in-process", action="store_true",
                        help="skip the in-process baseline (it loads a second copy of the model: 4.5 GB at full "
                             "size); the paired overhead needs none")
    parser.add_argument("--image-cache-mb", type=float, default=256.0,
                        help="the server's prefix cache (default 256: the new workload's hundreds of pictures fill "
                             "it and are evicted, as in service; a full-size prefix takes ~500 MB, give 1024)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    global MAX_TOKENS
    MAX_TOKENS = args.max_tokens
    workloads = args.workloads.split(",")

    from PIL import Image

    from edge_vlm.engine import answer
    from edge_vlm.runtime import BundleEngine

    engine = None if args.no_in_process else BundleEngine.from_bundle(args.bundle, threads=args.threads)
    levels = [int(c) for c in args.concurrency.split(",")]
    per_round = max(1, args.requests // args.rounds // 2)
    # every `new` request gets a picture of its own: the overhead rounds, then each concurrency level
    fresh = pictures(args.rounds * per_round + args.requests * len(levels), seed=1)
    cached = pictures(1, seed=2)
    log = tempfile.TemporaryFile("w+")  # the server's stderr, shown if it fails to start
    process, port, server_command = start_server(args.bundle, args.threads, args.image_cache_mb, log)
    results = {"label": args.label, "bundle": str(Path(args.bundle).resolve()),
               "random_weights": _random_weights(args.bundle), "machine": machine(),
               "command": shlex.join([sys.executable, *sys.argv]), "server_command": server_command,
               "picture": "480x480 JPEG (synthetic scene), one question, non-streamed, greedy",
               "max_tokens": MAX_TOKENS,
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "overhead": {}, "concurrency": {}}
    try:
        warm = Client(port)
        for jpeg in pictures(1, seed=3):  # warm both sides (first runs allocate)
            warm.ask(body(jpeg))
            if engine:
                answer(engine, engine.prepare_image(Image.open(io.BytesIO(jpeg))), QUESTION, config=config())
        split = args.rounds * per_round
        if "cached" in workloads:
            results["overhead"]["cached"] = overhead(engine, port, cached, args.rounds, per_round, new=False,
                                                     server_pid=process.pid)
        if "new" in workloads:
            results["overhead"]["new"] = overhead(engine, port, fresh[:split], args.rounds, per_round, new=True,
                                                  server_pid=process.pid)
        if "cached" in workloads:
            results["concurrency"]["cached"] = [concurrent(port, [body(cached[0])], c, args.requests)
                                                for c in levels]
        if "new" in workloads:
            rows = []
            for level, c in enumerate(levels):
                start = split + level * args.requests
                rows.append(concurrent(port, [body(j) for j in fresh[start:start + args.requests]], c,
                                       args.requests))
            results["concurrency"]["new"] = rows
    finally:
        process.send_signal(2)
        process.wait(60)
        log.close()
    results["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    print(f"edge-vlm serve, {args.label} ({results['machine']['cpu']}, {results['machine']['cores']} cores, "
          f"load {results['machine']['load_average_1m']:.1f} -> {results['machine']['load_average_1m_end']:.1f})")
    print(f"{'workload':8} {'in-process p50':>15} {'server p50':>11} {'overhead':>10} {'paired overhead':>16} "
          f"{'CPU in-process':>15} {'CPU server':>11}")
    for workload, o in results["overhead"].items():
        local = f"{o['in_process']['p50_ms']:12.2f} ms" if "in_process" in o else f"{'-':>15}"
        unpaired = f"{o['overhead_ms_p50']:7.2f} ms" if "in_process" in o else f"{'-':>10}"
        local_cpu = f"{o['in_process_cpu_ms_per_call']:12.2f} ms" if "in_process" in o else f"{'-':>15}"
        print(f"{workload:8} {local} {o['server']['p50_ms']:8.2f} ms {unpaired} {o['paired_overhead_ms_p50']:8.2f} ms "
              f"({o['paired_overhead_pct_p50']:4.1f}%) {local_cpu} {o['server_cpu_ms_per_request']:8.2f} ms")
    print(f"{'workload':8} {'clients':>7} {'req/s':>8} {'p50':>10} {'p95':>10} {'outside job':>12} {'errors':>6}")
    for workload, rows in results["concurrency"].items():
        for row in rows:
            if not row["requests"]:
                print(f"{workload:8} {row['clients']:7d} no request answered {row['errors']:6d}")
                continue
            print(f"{workload:8} {row['clients']:7d} {row['requests_per_s']:8.2f} {row['p50_ms']:7.1f} ms "
                  f"{row['p95_ms']:7.1f} ms {row['outside_job_ms_p50']:9.2f} ms {row['errors']:6d}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
