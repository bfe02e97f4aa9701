"""Images in and out of the API: caps before decoding, the CLI's bomb guard, and remote URLs refused
unless allowed (and then only https, allowed domains, public addresses)."""

import base64
import io

import pytest
from PIL import Image

from nexusgen.processing.images import decode_image
from nexusgen.serve.errors import APIError
from nexusgen.serve.media import image_from_data_url, image_from_url, png_base64
from nexusgen.serve.settings import ServeSettings


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_decode_image_shares_the_cli_guard_and_restricts_formats():
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))
    decoded = decode_image(_encoded(rgba, "PNG"), "upload")
    assert decoded.mode == "RGB" and decoded.size == (8, 6) and decoded.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ValueError, match="upload: 100x100 pixels is more than the limit of 5000"):
        decode_image(_encoded(Image.new("L", (100, 100)), "PNG"), "upload", max_pixels=5000)
    with pytest.raises(ValueError, match="not a readable image"):
        decode_image(_encoded(Image.new("RGB", (4, 4)), "BMP"), "upload", formats=("PNG", "JPEG", "WEBP"))
    assert decode_image(_encoded(Image.new("RGB", (4, 4)), "BMP"), "upload").size == (4, 4)  # every format


def test_png_round_trip_through_a_data_url():
    image = Image.new("RGB", (16, 8), (10, 200, 30))
    back = image_from_data_url("data:image/png;base64," + png_base64(image), "x", ServeSettings())
    assert back.tobytes() == image.tobytes()


@pytest.mark.parametrize("url, code", [
    ("https://images.example.org/a.png", "remote_url_refused"),  # no allow-list
    ("http://169.254.169.254/latest/meta-data/", "remote_url_refused"),
    ("ftp://example.org/a.png", "remote_url_refused"),
    ("data:text/plain;base64,aGVsbG8=", "invalid_image_url"),
])
def test_remote_urls_are_refused_by_default(url, code):
    with pytest.raises(APIError) as caught:
        image_from_url(url, "image", ServeSettings())
    assert caught.value.status == 400 and caught.value.code == code and caught.value.param == "image"


@pytest.mark.parametrize("url, message", [
    ("http://localhost/a.png", "only https"),
    ("https://user:pw@localhost/a.png", "only https"),
    ("https://evil.example.net/a.png", "not on this server's allow-list"),
    ("https://localhost.evil.net/a.png", "not on this server's allow-list"),
    ("https://localhost/a.png", "non-public address"),  # allowed by name, but loopback: SSRF
    ("https://127.0.0.1/a.png", "non-public address"),
])
def test_an_allow_list_still_refuses_non_https_other_domains_and_private_addresses(url, message):
    settings = ServeSettings(allowed_image_domains=("localhost", "127.0.0.1"))
    with pytest.raises(APIError, match=message):
        image_from_url(url, "image", settings)


def test_base64_is_capped_before_decoding():
    settings = ServeSettings(max_image_bytes=30)
    with pytest.raises(APIError) as caught:
        image_from_data_url("data:image/png;base64," + base64.b64encode(b"x" * 300).decode(), "image", settings)
    assert caught.value.status == 413 and "characters" in caught.value.message
