"""Live servers on loopback for the serving tests: the bundled shapes-mini model behind uvicorn, in a thread.

`live_server` is shared by the module (one model load); `start_server` starts one with other settings.
`http` sends raw requests (what the OpenAI client would never send: bad JSON, wrong types, bombs).
"""

from __future__ import annotations

import base64
import http.client as httpclient
import io
import json
import socket
import threading
import time
from dataclasses import dataclass

import pytest
import uvicorn
from PIL import Image

from nexusgen.api import NexusGen
from nexusgen.serve.app import create_app
from nexusgen.serve.settings import ServeSettings


@pytest.fixture(scope="session")
def shapes_mini():
    return NexusGen.from_pretrained("shapes-mini", progress=False)


@dataclass
class Server:
    host: str
    port: int
    app: object
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start(model, settings: ServeSettings) -> Server:
    app = create_app(model, settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return Server("127.0.0.1", sock.getsockname()[1], app, server, thread)


@pytest.fixture
def start_server(shapes_mini):
    """`start_server(**settings)` -> a running Server, stopped after the test."""
    servers = []

    def make(**settings):
        servers.append(start(shapes_mini, ServeSettings(**settings)))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def live_server(shapes_mini):
    server = start(shapes_mini, ServeSettings(api_key="test-key-123"))
    yield server
    server.stop()


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(server: Server, method: str, path: str, body: bytes | dict | None = None, *,
         headers: dict | None = None, key: str | None = "test-key-123", timeout: float = 120) -> Reply:
    """One raw HTTP request; a dict body is sent as JSON."""
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    if key is not None:
        headers.setdefault("Authorization", f"Bearer {key}")
    connection = httpclient.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def multipart(fields: list[tuple[str, str | tuple[str, bytes]]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart form; a tuple value is a file (filename, bytes)."""
    boundary = "nexusgen-test-boundary"
    chunks = []
    for name, value in fields:
        if isinstance(value, tuple):
            filename, data = value
            head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n")
            chunks.append(head.encode() + data + b"\r\n")
        else:
            chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                          .encode())
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def decode_b64_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def ui_examples() -> dict:
    """The examples the web UI offers (a JSON block in the page)."""
    import re
    from importlib import resources

    page = resources.files("nexusgen.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="examples">(.*?)</script>', page, re.S)
    return json.loads(block.group(1))


def example_image(b64: str) -> Image.Image:
    return decode_b64_png(b64).convert("RGB")
