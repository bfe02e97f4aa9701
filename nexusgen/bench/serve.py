"""`nexusgen bench serve`: the HTTP server under load, on loopback. Prints JSON.

The server runs as a user runs it (`nexusgen serve`, a subprocess); this process is the load generator.
Every loop is bounded in requests and in time. Measured, in one run:

* `in_process`: the batching roofline of `bench e2e` (`batch_speedup_bound`: no batching can multiply
  throughput by more on this CPU) and the in-process batch-4 speedup of `generate`;
* `concurrency_1`: one request at a time, `NexusGen.generate` in this process and the same request to
  `/v1/images/generations`, interleaved (the machine is shared: both see the same load): p50 latency over
  HTTP and its ratio to the in-process median (target <= 1.2);
* `one_at_a_time` and `batched`: 4 closed-loop clients against a server started with `--max-batch 1` and
  against the default batching server, in alternating rounds (both see the same machine);
  `batching_gain` = batched / one-at-a-time throughput (target >= 1.5, bounded by `batch_speedup_bound`);
* `capacity_rps`: closed-loop throughput of the batching server with `max_batch` clients;
* `load`: open-loop arrivals at 1x, 2x and 4x that capacity: offered and achieved throughput, p50/p95/p99
  latency of answered requests, batch sizes formed (from the server's /metrics), 429s and their rate,
  5xx (target 0), lost requests (sent but never answered: target 0);
* `rss_mb`: the server's resident memory after warm-up (which ends with a short overload burst, so its
  request threads exist) and after each load level (target: growth over the three levels < 5%).

`--quick` runs a few requests per phase (a smoke test of the benchmark itself).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nexusgen.openmp import current_policy
from nexusgen.serve.settings import ServeSettings

PROMPTS = ("a picture with a big blue square in the lower left corner", "a big red circle at the center",
           "a plain background with a small green triangle at the top", "a large yellow rhombus on the right",
           "an image of a medium purple cross at the bottom", "a little orange circle in the upper right corner")
PATH = "/v1/images/generations"
CLIENTS = 4
START_TIMEOUT_S = 180


@dataclass
class Phase:
    """Outcomes of the requests of one load phase."""

    latencies: list[float] = field(default_factory=list)  # answered (200) requests
    statuses: dict[int, int] = field(default_factory=dict)
    lost: int = 0  # sent, never answered (connection error, timeout)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, status: int | None, seconds: float) -> None:
        with self.lock:
            if status is None:
                self.lost += 1
                return
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.latencies.append(seconds)

    def summary(self) -> dict:
        sent = sum(self.statuses.values()) + self.lost
        answered = self.statuses.get(200, 0)
        server_errors = sum(n for s, n in self.statuses.items() if s >= 500)
        return {"sent": sent, "ok": answered, "status_429": self.statuses.get(429, 0),
                "rate_429": self.statuses.get(429, 0) / max(1, sent), "status_5xx": server_errors,
                "other_status": {str(s): n for s, n in self.statuses.items() if s not in (200, 429) and s < 500},
                "lost": self.lost, "seconds": self.seconds, "throughput_rps": answered / max(1e-9, self.seconds),
                **percentiles(self.latencies)}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_s": None, "p95_s": None, "p99_s": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50_s": statistics.median(ordered), "p95_s": at(0.95), "p99_s": at(0.99)}


class ServerProcess:
    """`nexusgen serve` in a subprocess on a free loopback port; stopped with SIGTERM."""

    def __init__(self, model: str, *options: str):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="nexusgen-bench-serve-", suffix=".log", delete=False)
        command = [sys.executable, "-m", "nexusgen", "serve", "--model", model, "--port", str(self.port),
                   "--log-level", "warning", *options]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while request("127.0.0.1", self.port, "GET", "/ready", timeout=2)[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start: see {self.log.name}")
            time.sleep(0.2)

    def rss_mb(self) -> float:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metrics(self) -> dict[str, float]:
        """Batch-size histogram samples of /metrics: {"count": ..., "sum": ..., "le=<b>": ...}."""
        from prometheus_client.parser import text_string_to_metric_families

        _, body = request("127.0.0.1", self.port, "GET", "/metrics", timeout=10)
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name.startswith("nexusgen_batch_size") and sample.labels.get("task") == "generate":
                    key = sample.name.removeprefix("nexusgen_batch_size_")
                    out[key if key != "bucket" else f"le={sample.labels['le']}"] = sample.value
        return out

    def stop(self) -> int | None:
        """SIGTERM, then the exit code (0 after a clean drain); calling it again does nothing."""
        if self.log.closed:
            return self.process.returncode
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
        os.unlink(self.log.name)
        return self.process.returncode


def request(host: str, port: int, method: str, path: str, body: dict | None = None,
            timeout: float = 300) -> tuple[int | None, bytes]:
    """(status, body); status None when no answer came (refused, reset, timed out)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return None, b""
    finally:
        connection.close()


def generate_body(k: int, steps: int | None) -> dict:
    body = {"prompt": PROMPTS[k % len(PROMPTS)], "seed": k}
    if steps is not None:
        body["num_inference_steps"] = steps
    return body


def closed_loop(server: ServerProcess, clients: int, per_client: int, steps: int | None,
                time_limit_s: float, phase: Phase | None = None) -> Phase:
    """`clients` threads, each sending `per_client` requests back to back (or until the time limit); adds
    to `phase` when given (rounds of one measurement)."""
    phase, stop_at = phase or Phase(), time.monotonic() + time_limit_s

    def client(index: int) -> None:
        for k in range(per_client):
            if time.monotonic() > stop_at:
                return
            started = time.perf_counter()
            status, _ = request("127.0.0.1", server.port, "POST", PATH, generate_body(index * 1000 + k, steps))
            phase.record(status, time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds += time.perf_counter() - started
    return phase


def open_loop(server: ServerProcess, rate_rps: float, duration_s: float, steps: int | None) -> Phase:
    """Requests arriving at `rate_rps` for `duration_s`, whatever the answers (bounded: rate x duration)."""
    phase, total = Phase(), max(1, round(rate_rps * duration_s))

    def one(k: int) -> None:
        started = time.perf_counter()
        status, _ = request("127.0.0.1", server.port, "POST", PATH, generate_body(k, steps))
        phase.record(status, time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(128, total)) as pool:
        for k in range(total):
            delay = started + k / rate_rps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, k)
    phase.seconds = time.perf_counter() - started
    return phase


def batches_formed(before: dict, after: dict) -> dict:
    """Batch sizes of the model calls made between two /metrics snapshots (histogram buckets de-cumulated:
    "<=4": calls of 4 items, or of 3 when the bucket below is "<=2")."""
    calls = after.get("count", 0) - before.get("count", 0)
    items = after.get("sum", 0) - before.get("sum", 0)
    bounds = sorted((float(k.removeprefix("le=")), k) for k in after if k.startswith("le="))
    by_size, below = {}, 0.0
    for bound, key in bounds:
        cumulative = after[key] - before.get(key, 0)
        if cumulative - below:
            by_size["<=" + (f"{bound:g}" if bound != float("inf") else "inf")] = cumulative - below
        below = cumulative
    return {"calls": calls, "mean_batch": items / calls if calls else None, "calls_by_size": by_size}


def load_model(model_name: str):
    from nexusgen.api import NexusGen

    return NexusGen.from_pretrained(model_name, progress=False)


def batching_bound(model, steps: int | None, repeats: int) -> dict:
    """The batching roofline of `bench e2e` on this CPU, and the in-process batch-4 speedup."""
    from nexusgen.bench.e2e import batching_roofline, generation_speed

    num_steps = steps or model.config.sampling.num_steps
    report = {"num_steps": num_steps, **generation_speed(model, repeats, CLIENTS, num_steps)}
    report.update(batching_roofline(model, report))
    return {"num_steps": num_steps, f"in_process_batch{CLIENTS}_speedup": report["batch_speedup"],
            "batch_speedup_bound": report["batch_speedup_bound"],
            "batch1_fraction_of_peak": report["batch1_fraction_of_peak"]}


def overhead(model, server: ServerProcess, steps: int | None, pairs: int) -> dict:
    """One request at a time: in-process `generate` and the same request over HTTP, interleaved so both
    see the same machine (these CPUs are shared and noisy)."""
    in_process, served = [], Phase()
    for k in range(pairs):
        body = generate_body(k, steps)
        started = time.perf_counter()
        model.generate(body["prompt"], seed=body["seed"], num_steps=steps)
        in_process.append(time.perf_counter() - started)
        started = time.perf_counter()
        status, _ = request("127.0.0.1", server.port, "POST", PATH, body)
        served.record(status, time.perf_counter() - started)
        served.seconds += time.perf_counter() - started
    summary = served.summary()
    summary["in_process_s_median"] = statistics.median(in_process)
    summary["ratio_to_in_process"] = summary["p50_s"] / summary["in_process_s_median"]
    return summary


def batching_gain(single: ServerProcess, batched: ServerProcess, per_client: int, rounds: int,
                  steps: int | None, limit: float) -> tuple[dict, dict]:
    """CLIENTS closed-loop clients against the one-at-a-time and the batching server, in alternating
    rounds, so that both see the same machine (the load of a shared CPU drifts within minutes)."""
    one, many = Phase(), Phase()
    for _ in range(rounds):
        closed_loop(single, CLIENTS, per_client, steps, limit, one)
        closed_loop(batched, CLIENTS, per_client, steps, limit, many)
    return one.summary(), many.summary()


def run(model_name: str = "shapes-mini", *, quick: bool = False, steps: int | None = None) -> dict:
    """`nexusgen bench serve [--model M] [--steps N] [--quick]`: the report (printed as JSON).

    Args:
        model_name: the model the servers load (anything `NexusGen.from_pretrained` accepts).
        quick: fewer requests and rounds (a smoke run).
        steps: generation steps of every request (default: the model's own).
    """
    per_client, rounds, pairs, duration = (2, 1, 3, 2.0) if quick else (3, 3, 12, 10.0)
    limit = 120.0 if quick else 300.0
    max_batch = ServeSettings().max_batch
    report = {"model": model_name, "quick": quick, "threads": torch.get_num_threads(),
              "omp_wait_policy": current_policy(), "clients": CLIENTS, "max_batch": max_batch,
              "open_loop_seconds": duration}
    model = load_model(model_name)
    report["in_process"] = batching_bound(model, steps, 2 if quick else 5)

    single, server = ServerProcess(model_name, "--max-batch", "1"), None
    try:
        server = ServerProcess(model_name)
        for warm in (single, server):  # allocator, threads, every batch size
            closed_loop(warm, max_batch, 2, steps, limit)
        report["one_at_a_time"], report["batched"] = batching_gain(single, server, per_client, rounds, steps, limit)
        single.stop()
        report["batching_gain"] = report["batched"]["throughput_rps"] / report["one_at_a_time"]["throughput_rps"]
        report["concurrency_1"] = overhead(model, server, steps, pairs)
        report["capacity_rps"] = closed_loop(server, max_batch, 2 * per_client, steps, limit).summary()[
            "throughput_rps"]
        # a first overload burst: the server's request threads (PNG encoding) and their malloc arenas exist
        # before the baseline, so the RSS figure shows growth across the load, not the first burst
        open_loop(server, 4 * report["capacity_rps"], duration / 4, steps)
        rss = {"after_warmup": server.rss_mb()}
        report["load"] = {}
        for factor in (1, 2, 4):
            before = server.metrics()
            phase = open_loop(server, factor * report["capacity_rps"], duration, steps).summary()
            phase["offered_rps"] = factor * report["capacity_rps"]
            phase["batches"] = batches_formed(before, server.metrics())
            report["load"][f"{factor}x"] = phase
            rss[f"after_{factor}x"] = server.rss_mb()
    finally:
        single.stop()
        exit_code = server.stop() if server is not None else None
    rss["growth_fraction"] = (rss["after_4x"] - rss["after_warmup"]) / rss["after_warmup"]
    report["rss_mb"] = rss
    report["server_exit_code_on_sigterm"] = exit_code
    report["targets"] = targets(report)
    return report


def targets(report: dict) -> dict:
    """The issue's targets, each with the measured value and whether it was met."""
    heavy = report["load"]["4x"]
    overhead = report["concurrency_1"]["ratio_to_in_process"]
    every = list(report["load"].values())
    return {
        "zero_5xx_all_loads": {"value": sum(p["status_5xx"] for p in every), "met": all(p["status_5xx"] == 0
                                                                                       for p in every)},
        "zero_lost_all_loads": {"value": sum(p["lost"] for p in every), "met": all(p["lost"] == 0 for p in every)},
        "rss_growth_below_5pct": {"value": report["rss_mb"]["growth_fraction"],
                                  "met": report["rss_mb"]["growth_fraction"] < 0.05},
        "batching_gain_at_least_1.5": {"value": report["batching_gain"], "met": report["batching_gain"] >= 1.5,
                                       "bound": report["in_process"]["batch_speedup_bound"]},
        "overhead_at_most_1.2": {"value": overhead, "met": overhead <= 1.2},
        "429_at_4x": {"value": heavy["rate_429"], "met": None},
    }
