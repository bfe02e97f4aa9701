"""`ServeSettings` and the `nexusgen serve` command line: every limit is an option, bad values and a taken
port fail before the model loads, and the key is never printed."""

import dataclasses
import socket
import time

import pytest

from nexusgen.cli import build_parser, main
from nexusgen.commands.serve import settings_from_args
from nexusgen.serve.settings import ServeSettings, setting_fields


def test_every_setting_is_a_documented_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for f in setting_fields():
        assert "--" + f.name.replace("_", "-") in text and f.metadata["help"]


def test_options_reach_the_settings(monkeypatch):
    monkeypatch.delenv("NEXUSGEN_API_KEY", raising=False)
    args = build_parser().parse_args(["serve", "--max-batch", "3", "--max-wait-ms", "2.5", "--max-n", "2",
                                      "--allowed-image-domains", "images.example.org, cdn.example.org"])
    settings = settings_from_args(args)
    assert (settings.max_batch, settings.max_wait_ms, settings.max_n) == (3, 2.5, 2)
    assert settings.allowed_image_domains == ("images.example.org", "cdn.example.org")
    assert settings.max_queue == ServeSettings().max_queue and settings.api_key is None
    monkeypatch.setenv("NEXUSGEN_API_KEY", "from-the-environment")
    assert settings_from_args(build_parser().parse_args(["serve"])).api_key == "from-the-environment"
    assert settings_from_args(build_parser().parse_args(["serve", "--api-key", "given"])).api_key == "given"


@pytest.mark.parametrize("field, value", [("max_batch", 0), ("max_queue", -1), ("max_wait_ms", float("nan")),
                                          ("request_timeout_s", float("inf")), ("max_n", True)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        ServeSettings(**{field: value})


def test_the_key_is_never_printed():
    settings = ServeSettings(api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(settings) and "api_key='***'" in repr(settings)
    with pytest.raises(ValueError, match="api_key"):
        ServeSettings(api_key="  ")
    assert dataclasses.asdict(settings)["api_key"] == "sk-very-secret"  # usable, just not shown


def test_a_taken_port_fails_fast_with_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        assert main(["serve", "--port", str(port)]) == 2
        assert time.monotonic() - started < 5  # before any model loads
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0]


def test_a_bad_limit_fails_fast(capsys):
    assert main(["serve", "--max-batch", "0"]) == 2
    assert "max_batch must be a positive number" in capsys.readouterr().err


def test_without_the_serving_extra_the_command_says_what_to_install(monkeypatch, capsys):
    import sys

    for name in [m for m in sys.modules if m.startswith("nexusgen.serve.") and m not in
                 ("nexusgen.serve.settings",)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["serve", "--port", str(port)]) == 2
    assert "pip install 'nexusgen[serve]'" in capsys.readouterr().err
