"""Every subcommand's --help works, through `python -m nexusgen` and the parser."""

import subprocess
import sys

import pytest

from nexusgen.cli import build_parser, main

SUBCOMMANDS = ["understand", "generate", "edit", "chat", "embed", "demo", "convert", "assemble", "train",
               "export-checkpoint", "export-official", "prepare-embeds", "eval", "bench", "serve"]


def test_the_list_covers_every_subcommand():
    import argparse

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(actions[0].choices) == sorted(SUBCOMMANDS)


def test_python_m_help():
    out = subprocess.run([sys.executable, "-m", "nexusgen", "--help"], capture_output=True, text=True, check=True)
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS + ["eval shapes", "eval geneval-export", "eval dpg-export",
                                               "eval imgedit-export", "eval gedit-export", "eval understand"])
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*name.split(), "--help"])
    assert exit_info.value.code == 0
    assert "usage: nexusgen " + name in capsys.readouterr().out


def test_unknown_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("command", [["generate"], ["edit", "--image", "x.png"]])
def test_guidance_is_one_option_and_cfg_its_old_spelling(command):
    for spelling in ("--guidance", "--cfg"):
        args = build_parser().parse_args([*command, "--prompt", "p", "--out", "o.png", spelling, "2.5"])
        assert args.guidance == 2.5 and not hasattr(args, "cfg")
