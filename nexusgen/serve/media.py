"""Images in and out of the HTTP API, with every cap applied before the expensive step.

In: a base64 data URL (chat `image_url` parts) or uploaded bytes (edits). The order is fixed: cap the
base64 text's length, decode it strictly, cap the bytes, then open the image with
`nexusgen.processing.images.decode_image` (the CLI's decompression-bomb guard: the pixel count is read
from the header and refused before a pixel is decoded; only PNG, JPEG and WEBP are opened). Remote
`https://` URLs are fetched only from the configured allow-list of domains: https only, no redirects,
every address the name resolves to must be public, a byte cap while reading, and a timeout.

Out: PNG, base64-encoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import re
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from PIL import Image

from nexusgen.processing.images import ImageFileError, decode_image
from nexusgen.serve.errors import APIError, bad_request
from nexusgen.serve.settings import ServeSettings

FORMATS = ("PNG", "JPEG", "WEBP")
"""Decoders the server opens (PIL knows many more; each is attack surface)."""

_DATA_URL = re.compile(r"data:image/(png|jpeg|jpg|webp);base64,", re.IGNORECASE)


def image_from_bytes(data: bytes, param: str, settings: ServeSettings) -> Image.Image:
    """Uploaded or decoded image bytes -> RGB image (400 not an image / too many pixels, 413 too big)."""
    if len(data) > settings.max_image_bytes:
        raise APIError(413, f"{param}: {len(data)} bytes is more than the limit of {settings.max_image_bytes}",
                       param=param, code="image_too_large")
    if not data:
        raise bad_request(f"{param}: empty file", param, "invalid_image")
    try:
        return decode_image(data, param, settings.max_image_pixels, FORMATS)
    except ImageFileError as err:
        code = "image_too_large" if err.reason == "too_many_pixels" else "invalid_image"
        raise bad_request(f"{err} (accepted: PNG, JPEG, WEBP)", param, code) from None


def image_from_data_url(url: str, param: str, settings: ServeSettings) -> Image.Image:
    """`data:image/png;base64,...` -> RGB image, the base64 length capped before decoding."""
    match = _DATA_URL.match(url)
    if match is None:
        raise bad_request(f"{param}: expected a data URL 'data:image/png|jpeg|webp;base64,...'", param,
                          "invalid_image_url")
    text = url[match.end():]
    limit = 4 * math_ceil_div(settings.max_image_bytes, 3) + 4
    if len(text) > limit:
        raise APIError(413, f"{param}: the base64 image is {len(text)} characters, more than the limit of {limit}",
                       param=param, code="image_too_large")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param}: the base64 data is not valid", param, "invalid_base64") from None
    return image_from_bytes(data, param, settings)


def image_from_url(url: str, param: str, settings: ServeSettings) -> Image.Image:
    """A chat `image_url`: a data URL, or an https URL on an allowed domain (fetched, blocking)."""
    if not isinstance(url, str) or not url:
        raise bad_request(f"{param}: expected a URL string", param, "invalid_image_url")
    if url[:5].lower() == "data:":
        return image_from_data_url(url, param, settings)
    if not settings.allowed_image_domains:
        raise bad_request(f"{param}: remote image URLs are not fetched by this server; send the image as a "
                          "base64 data URL (data:image/png;base64,...)", param, "remote_url_refused")
    return image_from_bytes(fetch(url, param, settings), param, settings)


def fetch(url: str, param: str, settings: ServeSettings) -> bytes:
    """GET an allowed https URL: no redirects, public addresses only, at most max_image_bytes."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not host or parts.username or parts.password:
        raise bad_request(f"{param}: only https URLs without credentials are fetched", param, "remote_url_refused")
    if not any(host == d or host.endswith("." + d) for d in settings.allowed_image_domains):
        raise bad_request(f"{param}: the domain {host!r} is not on this server's allow-list", param,
                          "remote_url_refused")
    _check_public(host, parts.port or 443, param)
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers={"User-Agent": "nexusgen-serve"})
    try:
        with opener.open(request, timeout=settings.image_fetch_timeout_s) as response:
            data = response.read(settings.max_image_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise bad_request(f"{param}: could not fetch the image ({type(err).__name__})", param,
                          "image_fetch_failed") from None
    if len(data) > settings.max_image_bytes:
        raise APIError(413, f"{param}: the remote image is larger than {settings.max_image_bytes} bytes",
                       param=param, code="image_too_large")
    return data


def _check_public(host: str, port: int, param: str) -> None:
    """Refuse a name that resolves to any loopback, private, link-local or otherwise non-public address
    (SSRF: e.g. 169.254.169.254). The fetch resolves again, so a DNS-rebinding name stays a residual risk:
    only list domains you trust."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except OSError:
        raise bad_request(f"{param}: cannot resolve {host!r}", param, "image_fetch_failed") from None
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_global:
            raise bad_request(f"{param}: {host!r} resolves to a non-public address", param, "remote_url_refused")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        raise urllib.error.URLError("redirects are not followed")


def math_ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def png_base64(image: Image.Image) -> str:
    """An image as base64 PNG text."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def png_data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + png_base64(image)
