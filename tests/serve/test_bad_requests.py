"""A corpus of bad requests: each gets its 4xx in OpenAI's envelope, naming the field, and the server keeps
serving (`/health`, and a real generation afterwards)."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import data_url, http, multipart, png_bytes

GEN = "/v1/images/generations"
CHAT = "/v1/chat/completions"
EDIT = "/v1/images/edits"
SMALL = Image.new("RGB", (32, 32), (200, 40, 40))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (a decompression bomb's header) with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def real_bomb() -> bytes:
    """A valid 5000x5000 PNG of 25 MP (over the 16 MP default) that compresses to a few KB."""
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000), 0).save(buffer, format="PNG")
    return buffer.getvalue()


def chat_with(url: str) -> dict:
    return {"model": "shapes-mini", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]}]}


def b64url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


OK_GEN = {"model": "shapes-mini", "prompt": "a red circle"}
CORPUS = [
    # (name, method, path, body, expected status, expected code, expected param)
    ("bad json", "POST", GEN, b"{not json", 400, "invalid_json", None),
    ("json array", "POST", GEN, b"[1, 2]", 400, None, None),
    ("missing prompt", "POST", GEN, {"model": "shapes-mini"}, 400, "missing_required_parameter", "prompt"),
    ("prompt not a string", "POST", GEN, {"prompt": 5}, 400, "invalid_value", "prompt"),
    ("n as a string", "POST", GEN, {**OK_GEN, "n": "2"}, 400, "invalid_value", "n"),
    ("unknown field", "POST", GEN, {**OK_GEN, "styel": "vivid"}, 400, "unknown_parameter", "styel"),
    ("empty prompt", "POST", GEN, {**OK_GEN, "prompt": "   "}, 400, "empty_prompt", "prompt"),
    ("prompt too long", "POST", GEN, {**OK_GEN, "prompt": "red " * 2000}, 400, "prompt_too_long", "prompt"),
    ("unknown model", "POST", GEN, {**OK_GEN, "model": "dall-e-3"}, 404, "model_not_found", "model"),
    ("n too large", "POST", GEN, {**OK_GEN, "n": 99}, 400, "invalid_n", "n"),
    ("n zero", "POST", GEN, {**OK_GEN, "n": 0}, 400, "invalid_n", "n"),
    ("size too large", "POST", GEN, {**OK_GEN, "size": "4096x4096"}, 400, "invalid_size", "size"),
    ("size not a multiple", "POST", GEN, {**OK_GEN, "size": "100x100"}, 400, "invalid_size", "size"),
    ("size garbage", "POST", GEN, {**OK_GEN, "size": "big"}, 400, "invalid_size", "size"),
    ("steps too many", "POST", GEN, {**OK_GEN, "num_inference_steps": 100000}, 400, "invalid_steps",
     "num_inference_steps"),
    ("steps zero", "POST", GEN, {**OK_GEN, "num_inference_steps": 0}, 400, "invalid_steps", "num_inference_steps"),
    ("NaN guidance", "POST", GEN, b'{"prompt": "a red circle", "true_cfg_scale": NaN}', 400, "invalid_value",
     "true_cfg_scale"),
    ("infinite guidance", "POST", GEN, b'{"prompt": "a red circle", "true_cfg_scale": Infinity}', 400,
     "invalid_value", "true_cfg_scale"),
    ("embedded guidance changed", "POST", GEN, {**OK_GEN, "guidance_scale": 7.0}, 400, "unsupported_value",
     "guidance_scale"),
    ("negative prompt", "POST", GEN, {**OK_GEN, "negative_prompt": "blurry"}, 400, "unsupported_parameter",
     "negative_prompt"),
    ("negative seed", "POST", GEN, {**OK_GEN, "seed": -1}, 400, "invalid_value", "seed"),
    ("seed overflow", "POST", GEN, {**OK_GEN, "seed": 2**70}, 400, "invalid_value", "seed"),
    ("url response", "POST", GEN, {**OK_GEN, "response_format": "url"}, 400, "invalid_value", "response_format"),
    ("corrupt base64", "POST", CHAT, chat_with("data:image/png;base64,@@@not-base64@@@"), 400, "invalid_base64",
     "messages.0.content.0.image_url"),
    ("not an image", "POST", CHAT, chat_with(b64url(b"hello, I am text")), 400, "invalid_image",
     "messages.0.content.0.image_url"),
    ("truncated png", "POST", CHAT, chat_with(b64url(png_bytes(SMALL)[:60])), 400, "invalid_image",
     "messages.0.content.0.image_url"),
    ("bomb header", "POST", CHAT, chat_with(b64url(png_header_only(40000, 40000))), 400, "image_too_large",
     "messages.0.content.0.image_url"),
    ("bomb image", "POST", CHAT, chat_with(b64url(real_bomb())), 400, "image_too_large",
     "messages.0.content.0.image_url"),
    ("svg data url", "POST", CHAT, chat_with("data:image/svg+xml;base64,PHN2Zz48L3N2Zz4="), 400,
     "invalid_image_url", "messages.0.content.0.image_url"),
    ("remote url", "POST", CHAT, chat_with("https://example.com/cat.png"), 400, "remote_url_refused",
     "messages.0.content.0.image_url"),
    ("metadata url", "POST", CHAT, chat_with("http://169.254.169.254/latest/meta-data/"), 400,
     "remote_url_refused", "messages.0.content.0.image_url"),
    ("file url", "POST", CHAT, chat_with("file:///etc/passwd"), 400, "remote_url_refused",
     "messages.0.content.0.image_url"),
    ("no messages", "POST", CHAT, {"model": "shapes-mini", "messages": []}, 400, "invalid_value", "messages"),
    ("bad role", "POST", CHAT, {"messages": [{"role": "tool", "content": "x"}]}, 400, "invalid_value",
     "messages.0.role"),
    ("ends with assistant", "POST", CHAT, {"messages": [{"role": "assistant", "content": "x"}]}, 400,
     "invalid_value", "messages"),
    ("placeholder in text", "POST", CHAT, {"messages": [{"role": "user", "content": "a <image> b"}]}, 400,
     "invalid_value", "messages.0.content"),
    ("too many images", "POST", CHAT, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(SMALL)}}] * 5 + [{"type": "text", "text": "hi"}]}]},
     400, "too_many_images", "messages.0.content"),
    ("chat n", "POST", CHAT, {"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "invalid_n", "n"),
    ("max tokens zero", "POST", CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400,
     "invalid_value", "max_tokens"),
    ("max tokens huge", "POST", CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400,
     "invalid_value", "max_tokens"),
    ("temperature too hot", "POST", CHAT, {"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400,
     "invalid_value", "temperature"),
    ("top_p zero", "POST", CHAT, {"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400,
     "invalid_value", "top_p"),
    ("stream with images", "POST", CHAT, {"messages": [{"role": "user", "content": "draw"}], "stream": True,
                                          "modalities": ["text", "image"]}, 400, "unsupported_value", "stream"),
    ("image setting on a text answer", "POST", CHAT, {"messages": [{"role": "user", "content": "hi"}],
                                                      "num_inference_steps": 4}, 400, "unsupported_parameter",
     "num_inference_steps"),
    ("unknown modality", "POST", CHAT, {"messages": [{"role": "user", "content": "hi"}], "modalities": ["audio"]},
     400, "invalid_value", "modalities.0"),
    ("edit as json", "POST", EDIT, {"prompt": "x"}, 415, "unsupported_media_type", None),
    ("unknown route", "GET", "/v1/nothing", None, 404, "not_found", None),
    ("wrong method", "GET", GEN, None, 405, "method_not_allowed", None),
]


@pytest.mark.parametrize("name, method, path, body, status, code, param", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_request_gets_its_4xx(live_server, name, method, path, body, status, code, param):
    reply = http(live_server, method, path, body)
    assert reply.status == status, reply.body[:300]
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    assert error["param"] == param
    assert len(reply.body) < 2000  # never echoes a payload (the bomb, the long prompt)


def _edit_form(*files, extra=()):
    return multipart([*(("image", ("a.png", f)) for f in files), ("prompt", "make it blue"), *extra])


@pytest.mark.parametrize("name, form, status, code, param", [
    ("two images", lambda: _edit_form(png_bytes(SMALL), png_bytes(SMALL)), 400, "too_many_images", "image"),
    ("image[] twice", lambda: multipart([("image[]", ("a.png", png_bytes(SMALL))),
                                         ("image[]", ("b.png", png_bytes(SMALL))), ("prompt", "x")]),
     400, "too_many_images", "image"),
    ("no image", lambda: multipart([("prompt", "make it blue")]), 400, "missing_required_parameter", "image"),
    ("image as text", lambda: multipart([("image", "not a file"), ("prompt", "x")]), 400, "invalid_image", "image"),
    ("no prompt", lambda: multipart([("image", ("a.png", png_bytes(SMALL)))]), 400, "missing_required_parameter",
     "prompt"),
    ("mask", lambda: _edit_form(png_bytes(SMALL), extra=[("mask", ("m.png", png_bytes(SMALL)))]), 400,
     "unsupported_parameter", "mask"),
    ("corrupt image", lambda: _edit_form(b"\x89PNG garbage"), 400, "invalid_image", "image"),
    ("bomb", lambda: _edit_form(png_header_only(40000, 40000)), 400, "image_too_large", "image"),
    ("bad decoder", lambda: _edit_form(png_bytes(SMALL), extra=[("decoder", "magic")]), 400, "invalid_value",
     "decoder"),
    ("steps not a number", lambda: _edit_form(png_bytes(SMALL), extra=[("num_inference_steps", "many")]), 400,
     "invalid_value", "num_inference_steps"),
    ("n too large", lambda: _edit_form(png_bytes(SMALL), extra=[("n", "40")]), 400, "invalid_n", "n"),
    ("unknown field", lambda: _edit_form(png_bytes(SMALL), extra=[("quality", "hd")]), 400, "unknown_parameter",
     "quality"),
])
def test_bad_edit_form_gets_its_4xx(live_server, name, form, status, code, param):
    body, content_type = form()
    reply = http(live_server, "POST", EDIT, body, headers={"Content-Type": content_type})
    assert reply.status == status, reply.body[:300]
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


@pytest.mark.parametrize("headers, code", [
    ({}, "missing_api_key"),
    ({"Authorization": "Bearer wrong-key"}, "invalid_api_key"),
    ({"Authorization": "Basic dGVzdC1rZXktMTIz"}, "missing_api_key"),
    ({"Authorization": "Bearer test-key-1234"}, "invalid_api_key"),
])
def test_every_route_but_health_needs_the_key(live_server, headers, code):
    for method, path in [("GET", "/v1/models"), ("GET", "/ready"), ("GET", "/metrics"), ("POST", GEN),
                         ("POST", CHAT), ("POST", EDIT)]:
        reply = http(live_server, method, path, OK_GEN if method == "POST" else None, headers=headers, key=None)
        assert reply.status == 401 and reply.json()["error"]["code"] == code, path
        assert reply.headers["www-authenticate"] == "Bearer"
    assert http(live_server, "GET", "/health", key=None).status == 200
    assert http(live_server, "GET", "/", key=None).status == 200  # the static page (it holds no data)


def test_size_limits_give_413(start_server):
    server = start_server(max_request_bytes=50_000, max_image_bytes=2_000)
    big = http(server, "POST", GEN, {**OK_GEN, "prompt": "x" * 60_000})
    assert big.status == 413 and big.json()["error"]["code"] == "request_too_large"
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    assert len(png_bytes(noisy)) > 2_000  # noise does not compress
    image = http(server, "POST", CHAT, chat_with(data_url(noisy)))
    assert image.status == 413 and image.json()["error"]["param"] == "messages.0.content.0.image_url"
    huge_b64 = http(server, "POST", CHAT, chat_with("data:image/png;base64," + "A" * 20_000))
    assert huge_b64.status == 413 and huge_b64.json()["error"]["code"] == "image_too_large"
    body, content_type = _edit_form(png_bytes(noisy))
    upload = http(server, "POST", EDIT, body, headers={"Content-Type": content_type})
    assert upload.status == 413 and upload.json()["error"]["param"] == "image"


def test_the_server_still_serves_after_the_corpus(live_server):
    # runs after the corpus (file order): liveness, readiness, real work, and the errors were counted
    assert http(live_server, "GET", "/health").json() == {"status": "ok"}
    assert http(live_server, "GET", "/ready").json()["status"] == "ready"
    reply = http(live_server, "POST", GEN, {**OK_GEN, "seed": 1})
    assert reply.status == 200 and len(reply.json()["data"]) == 1
    metrics = http(live_server, "GET", "/metrics").body.decode()
    assert 'nexusgen_errors_total{kind="invalid_json"}' in metrics
    assert 'nexusgen_requests_total{endpoint="/v1/images/generations",status="400"}' in metrics
    assert 'status="500"' not in metrics
