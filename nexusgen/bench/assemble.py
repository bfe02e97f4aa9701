"""`nexusgen bench assemble`: peak host memory of `nexusgen assemble` against the size of what it reads. JSON.

Writes random stock folders at real widths and `--blocks` depth (`nexusgen.bench.stock_folders`; the LLM's MLP
width `--intermediate`, default real), then runs `nexusgen assemble` on them in a child process and reads
the child's peak resident set size from the kernel (`wait4`), next to the peak of a child that only
imports what assemble imports. Weights are streamed when the peak stays near the import baseline plus one
T5 block in fp32 while the inputs grow with depth (run it at two depths to see).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nexusgen.models.memory import maxrss_mib

GB = 1e9


def _child_peak_mib(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of a child process running `argv`."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{errors[-2000:]}")
    return maxrss_mib(usage.ru_maxrss), time.perf_counter() - started


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def run(blocks: int | None = None, intermediate: int | None = None) -> dict:
    """`nexusgen bench assemble [--blocks N] [--intermediate W]`: the report (printed as JSON).

    Args:
        blocks: depth of the stock folders' transformers (default 2).
        intermediate: LLM MLP width (default the real 18944).
    """
    from nexusgen.bench.stock_folders import FLUX_DIR, QWEN_DIR

    blocks = blocks or 2
    intermediate = intermediate or 18944
    with tempfile.TemporaryDirectory(prefix="nexusgen-bench-assemble-") as root:
        # written by a child too: a child's peak RSS counts what it shares with this process when it forks
        _child_peak_mib([sys.executable, "-c", "from nexusgen.bench.stock_folders import write_stock_folders; "
                         f"write_stock_folders({root!r}, blocks={blocks}, intermediate={intermediate})"])
        qwen, flux = Path(root) / QWEN_DIR, Path(root) / FLUX_DIR
        sizes = {p.name: _folder_bytes(p) for p in sorted(flux.iterdir()) if p.is_dir()}
        inputs = {"qwen": _folder_bytes(qwen)} | {name: size for name, size in sizes.items() if size}
        baseline, _ = _child_peak_mib([sys.executable, "-c", "import nexusgen.convert.assemble"])
        out = Path(root) / "model"
        peak, seconds = _child_peak_mib([sys.executable, "-m", "nexusgen", "assemble", "--qwen", str(qwen),
                                         "--flux", str(flux), "--out", str(out), "--device", "cpu"])
        new = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.stat().st_nlink == 1)
    t5_block = 4 * (4 * 4096 * 4096 + 3 * 4096 * 10240)  # fp32 bytes of one T5-XXL block (q, k, v, o, wi_0/1, wo)
    return {"blocks": blocks, "intermediate": intermediate, "inputs_gb": {k: v / GB for k, v in inputs.items()},
            "inputs_gb_total": sum(inputs.values()) / GB, "assemble_peak_rss_mib": peak,
            "import_baseline_peak_rss_mib": baseline, "assemble_above_baseline_mib": peak - baseline,
            "assemble_seconds": seconds,
            "t5_block_fp32_mib": t5_block / 2**20, "new_bytes_written_gb": new / GB,
            "measured": "peak RSS of the child processes (kernel wait4); inputs: safetensors bytes read"}
