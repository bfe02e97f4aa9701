"""`nexusgen serve` as a user runs it (a subprocess, key from the environment): nothing it logs contains the
key or an image; SIGTERM stops accepting work, lets the request that is running finish, and the process
exits 0."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


KEY = "sk-nexusgen-test-secret-8f2e"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def _get(url: str, timeout: float = 5):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH), timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_sigterm_drains_and_exits_zero(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "nexusgen", "serve", "--port", str(port)], stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, "NEXUSGEN_API_KEY": KEY})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(base + "/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, open(tmp_path / "server.log").read()
            time.sleep(0.2)
        image = _png_b64()
        for body in (_chat(image), _chat(image[:-40] + "!!!!")):  # a good and a corrupt image
            request = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                             headers=AUTH)
            try:
                urllib.request.urlopen(request, timeout=60).read()
            except urllib.error.HTTPError as err:
                assert err.code == 400
        result = {}

        def slow_request():
            body = json.dumps({"prompt": "a big red circle at the center", "num_inference_steps": 100}).encode()
            request = urllib.request.Request(base + "/v1/images/generations", data=body, headers=AUTH)
            with urllib.request.urlopen(request, timeout=120) as response:
                result["status"], result["body"] = response.status, json.loads(response.read())

        worker = threading.Thread(target=slow_request)
        worker.start()
        time.sleep(0.5)  # the request is running (100 steps take seconds)
        process.send_signal(signal.SIGTERM)
        worker.join(120)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert result["status"] == 200 and len(result["body"]["data"]) == 1  # the running request finished
    output = open(tmp_path / "server.log").read()
    assert "Shutting down" in output and "Traceback" not in output
    assert '"POST /v1/chat/completions HTTP/1.1" 400' in output  # requests are logged, by path and status
    assert KEY not in output and image[:40] not in output and image[-40:] not in output


def _png_b64() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _chat(image_b64: str) -> dict:
    return {"model": "shapes-mini", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image_b64}},
        {"type": "text", "text": "What is the color of the square?"}]}], "max_tokens": 4}
