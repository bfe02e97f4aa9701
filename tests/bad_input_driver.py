"""Runs `nexusgen.cli.main` on a list of command lines in one fresh interpreter and reports, per case, the
exit code, stderr, the seconds it took, whether torch had been imported by then, and the files it left.

Used by tests/test_bad_input.py: `python bad_input_driver.py CASES.json REPORT.json`. CASES.json is a list
of {"id", "argv", "stdin", "max_file_bytes"}; every case runs in a folder of its own (`cases/<id>`, made
by the test with the case's input files), whose listing is taken before and after. A fresh interpreter is
what a user's command starts in, so "torch was not imported" means the option was refused before any heavy import.

`max_file_bytes` stands in for a full disk (`conftest.file_size_limit`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback

from conftest import file_size_limit  # this folder is sys.path[0]: the script's own


def _listing(folder: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        found += [os.path.relpath(os.path.join(dirpath, n), folder) for n in dirnames + filenames]
    return sorted(found)


class _Stdin:
    """sys.stdin for a case: `chat` reads bytes from `.buffer`."""

    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


def run_case(case: dict, root: str) -> dict:
    from nexusgen.cli import main

    folder = os.path.join(root, case["id"])
    before = _listing(folder)
    err, out = io.StringIO(), io.StringIO()
    previous_stdin, sys.stdin = sys.stdin, _Stdin(case.get("stdin", "").encode("utf-8", "surrogateescape"))
    previous_cwd = os.getcwd()
    os.chdir(folder)
    start = time.perf_counter()
    try:
        with (contextlib.redirect_stderr(err), contextlib.redirect_stdout(out),
              file_size_limit(case.get("max_file_bytes"))):
            try:
                code = main(case["argv"])
            except SystemExit as exit_:  # argparse
                code = exit_.code
            except BaseException:  # what a user would see as a traceback
                print(traceback.format_exc(), file=sys.stderr)
                code = "traceback"
    finally:
        elapsed = time.perf_counter() - start
        os.chdir(previous_cwd)
        sys.stdin = previous_stdin
    return {"code": code, "stderr": err.getvalue(), "stdout": out.getvalue(), "seconds": elapsed,
            "torch_loaded": "torch" in sys.modules, "left": sorted(set(_listing(folder)) - set(before)),
            "gone": sorted(set(before) - set(_listing(folder)))}


def main() -> None:
    cases_file, report_file = sys.argv[1:3]
    with open(cases_file, encoding="utf-8") as f:
        cases = json.load(f)
    root = os.path.join(os.path.dirname(cases_file), "cases")
    report = {case["id"]: run_case(case, root) for case in cases}
    with open(report_file, "w", encoding="utf-8") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
