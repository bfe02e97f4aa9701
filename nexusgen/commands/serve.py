"""`nexusgen serve`: the options of every server limit, and the handler.

Everything a user can get wrong (port taken, bad limits, unknown model) fails before the model loads,
with one line on stderr. Importing this module loads no web framework (`nexusgen.cli` builds the serve
options from it; the server itself is imported when the command runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

from nexusgen.serve.settings import ServeSettings, setting_fields

API_KEY_ENV = "NEXUSGEN_API_KEY"


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """One option per `ServeSettings` field but the API key (`--max-batch`, ...), default: the setting's."""
    types = {"int": int, "float": float}
    for f in setting_fields():
        if f.name != "api_key":
            parser.add_argument("--" + f.name.replace("_", "-"), type=types.get(f.type, str), default=None,
                                help=f"{f.metadata['help']} (default {f.default!r})")


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """The `ServeSettings` given on the command line (an option left out keeps its default)."""
    given = {f.name: getattr(args, f.name) for f in setting_fields()
             if f.name != "api_key" and getattr(args, f.name, None) is not None}
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    return ServeSettings(**given, api_key=key)


def check_port_free(host: str, port: int) -> None:
    """ValueError if `host:port` cannot be bound (taken, or not an address of this machine)."""
    if not 0 < port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise ValueError(f"--host {host!r}: {err}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def serve(args: argparse.Namespace) -> int:
    """`nexusgen serve --model M [--host H] [--port P] [--api-key KEY] [limits...]`."""
    from nexusgen.commands.common import check_model_options, model_from_args

    settings = settings_from_args(args)
    check_model_options(args)
    check_port_free(args.host, args.port)
    try:
        from nexusgen.serve.app import serve as run_server
    except ImportError as err:
        raise ValueError(f"nexusgen serve needs the serving extra ({err.name} is missing): "
                         "pip install 'nexusgen[serve]'") from None

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    model = model_from_args(args)
    auth = "API key required" if settings.api_key else "no API key (use --api-key on a shared network)"
    print(f"nexusgen serve: {model.name} on http://{args.host}:{args.port}  (web UI at /, OpenAI API at /v1; "
          f"{auth})", flush=True)
    run_server(model, settings, host=args.host, port=args.port, log_level=args.log_level)
    return 0
