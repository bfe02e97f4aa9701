"""The worker through HTTP, with the real bundled model: batching gathers concurrent requests into one call
and keeps each request's result; a full queue answers 429 at once; queued work of a client that went
away, or past its deadline, is dropped. A gate in front of the model call holds the worker busy."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nexusgen.serve import worker as worker_module
from tests.serve.conftest import decode_b64_png, http

GEN = "/v1/images/generations"
PROMPTS = ["a picture with a big blue square in the lower left corner", "a big red circle at the center",
           "a plain background with a small green triangle at the top", "a large yellow rhombus on the right"]


@pytest.fixture
def gate(monkeypatch):
    """Model calls wait until `gate.open()`; `gate.calls` records (task, items) per call."""
    class Gate:
        def __init__(self):
            self.event, self.calls = threading.Event(), []

        def open(self):
            self.event.set()

    state = Gate()
    real = dict(worker_module.RUNNERS)

    def gated(task):
        def run(model, items, seeds, options):
            state.calls.append((task, len(items)))
            assert state.event.wait(60), "the test never opened the gate"
            return real[task](model, items, seeds, options)
        return run

    for task in real:
        monkeypatch.setitem(worker_module.RUNNERS, task, gated(task))
    yield state
    state.open()


def _generate(server, prompt, seed, **extra):
    reply = http(server, "POST", GEN, {"prompt": prompt, "seed": seed, **extra}, key=None)
    assert reply.status == 200, reply.body[:200]
    return np.asarray(decode_b64_png(reply.json()["data"][0]["b64_json"]))


def test_concurrent_requests_are_batched_and_keep_their_own_images(start_server, gate):
    server = start_server(max_batch=8, max_wait_ms=50)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(_generate, server, PROMPTS[0], 100)  # holds the worker at the gate
        while not gate.calls:
            time.sleep(0.01)
        rest = [pool.submit(_generate, server, p, 7 + k) for k, p in enumerate(PROMPTS)]
        while server.app.state.worker.depth < len(PROMPTS):
            time.sleep(0.01)
        gate.open()
        batched = [f.result() for f in rest]
        first.result()
    assert gate.calls == [("generate", 1), ("generate", 4)]  # the four queued requests: one call
    for k, prompt in enumerate(PROMPTS):  # bit-identical to the same request served alone
        assert np.array_equal(batched[k], _generate(server, prompt, 7 + k))
    assert metric(server, "nexusgen_batch_size_count", task="generate") == 6  # 1, then 4, then 4 alone
    assert metric(server, "nexusgen_batch_size_sum", task="generate") == 9


def hold_the_worker(pool, server, gate):
    """Send one request and wait until the worker is busy with it at the gate; returns its future."""
    running = pool.submit(http, server, "POST", GEN, {"prompt": PROMPTS[0], "seed": 0}, key=None)
    while not gate.calls:
        time.sleep(0.01)
    return running


def metric(server, name: str, **labels) -> float:
    """A sample of the server's /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = http(server, "GET", "/metrics", key=None).body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_a_full_queue_answers_429_at_once(start_server, gate):
    server = start_server(max_batch=1, max_queue=2)
    with ThreadPoolExecutor(3) as pool:
        running = hold_the_worker(pool, server, gate)
        queued = [pool.submit(http, server, "POST", GEN, {"prompt": p, "seed": 0}, key=None) for p in PROMPTS[:2]]
        while server.app.state.worker.depth < 2:
            time.sleep(0.01)
        started = time.monotonic()
        refused = http(server, "POST", GEN, {"prompt": PROMPTS[3]}, key=None)
        refused_after = time.monotonic() - started
        streamed = http(server, "POST", "/v1/chat/completions", {"stream": True, "messages": [
            {"role": "user", "content": "hi"}]}, key=None)
        gate.open()
        answers = [running.result()] + [f.result() for f in queued]
    assert refused.status == 429 and refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1 and refused_after < 5  # at once, not after the queue
    assert [a.status for a in answers] == [200, 200, 200]  # everything accepted is answered
    assert streamed.status == 429  # a stream is queued before its 200 goes out
    assert metric(server, "nexusgen_rejected_total", reason="queue_full") == 2


def test_a_client_that_disconnects_has_its_queued_work_dropped(start_server, gate):
    server = start_server(max_batch=1)
    with ThreadPoolExecutor(1) as pool:
        running = hold_the_worker(pool, server, gate)
        body = b'{"prompt": "a big red circle at the center", "seed": 3}'
        with socket.create_connection((server.host, server.port)) as impatient:
            impatient.sendall(b"POST " + GEN.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            while server.app.state.worker.depth < 1:
                time.sleep(0.01)
        deadline = time.monotonic() + 10
        while not server.app.state.worker.queue[0].cancelled and time.monotonic() < deadline:
            time.sleep(0.01)  # the server notices the closed connection
        gate.open()
        assert running.result().status == 200
    assert http(server, "GET", "/health", key=None).status == 200
    assert gate.calls == [("generate", 1)]  # the dropped request never reached the model
    assert metric(server, "nexusgen_dropped_total", reason="client_disconnected") == 1


def test_queued_work_past_its_deadline_gets_503(start_server, gate):
    server = start_server(max_batch=1, request_timeout_s=0.3)
    with ThreadPoolExecutor(2) as pool:
        running = hold_the_worker(pool, server, gate)
        late = pool.submit(http, server, "POST", GEN, {"prompt": PROMPTS[1], "seed": 0}, key=None)
        time.sleep(0.6)  # longer than the deadline
        gate.open()
        assert running.result().status == 200  # a started request finishes
        reply = late.result()
    assert reply.status == 503 and reply.json()["error"]["code"] == "deadline_exceeded"
    assert "retry-after" in reply.headers and gate.calls == [("generate", 1)]


def test_a_failing_batch_fails_its_requests_and_the_worker_carries_on(start_server, monkeypatch):
    real = worker_module.RUNNERS["generate"]
    failures = iter([RuntimeError("out of memory"), None, None])

    def flaky(model, items, seeds, options):
        error = next(failures)
        if error is not None:
            raise error
        return real(model, items, seeds, options)

    monkeypatch.setitem(worker_module.RUNNERS, "generate", flaky)
    server = start_server()
    broken = http(server, "POST", GEN, {"prompt": PROMPTS[0]}, key=None)
    assert broken.status == 500 and broken.json()["error"] == {
        "message": "internal error (RuntimeError)", "type": "server_error", "param": None, "code": "internal_error"}
    assert http(server, "GET", "/health", key=None).status == 200
    assert http(server, "POST", GEN, {"prompt": PROMPTS[0]}, key=None).status == 200


def test_draining_refuses_new_work_and_is_not_ready(start_server):
    server = start_server()
    server.app.state.worker.stop_accepting()  # what SIGTERM does first
    ready = http(server, "GET", "/ready", key=None)
    assert ready.status == 503 and ready.json()["error"]["code"] == "shutting_down"
    refused = http(server, "POST", GEN, {"prompt": PROMPTS[0]}, key=None)
    assert refused.status == 503 and refused.headers["retry-after"] == "5"
    assert http(server, "GET", "/health", key=None).status == 200  # alive: let it finish, do not restart it
