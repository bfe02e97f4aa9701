"""The `nexusgen` command line: the parser, and dispatch to the handlers of `nexusgen.commands`.

This module only declares the commands and their options. Each subcommand's handler lives in
`nexusgen.commands.<family>` and is imported when that subcommand runs, so `nexusgen --help` stays fast.
Bad input raises `ValueError` (or an OS error) at the boundary; `main` turns it into one clear line on
stderr and exit code 2, never a traceback. An OS error while writing names the output the user gave
(`--out`, ...), not the temporary file that failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from nexusgen import openmp
from nexusgen.validation import DEFAULT_MAX_NEW_TOKENS

DEFAULT_MODEL = "shapes-mini"

# Exceptions that mean "the user's input is wrong, or the machine refuses it" (a file that cannot be read or
# written: permissions, a full disk, a read-only file system): one line, exit 2. Anything else is a bug and
# keeps its traceback.
USER_ERRORS = (ValueError, OSError)
OUTPUT_OPTIONS = ("out", "out_dir")
"""The options that name a command's output (`--out`, `--out-dir`, a positional OUT_DIR)."""


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (`nexusgen generate: error: argument --steps: ...`, exit
    2), like every other bad input; `--help` still shows the usage. Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _call(family: str, function: str):
    """A handler that imports `nexusgen.commands.<family>` on use and calls its `function` with the args."""

    def handler(args: argparse.Namespace):
        return getattr(importlib.import_module(f"nexusgen.commands.{family}"), function)(args)

    return handler


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="bundled model name, a nexusgen model folder, or an official Nexus-GenV2 folder")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="compute dtype (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--offload", default="auto", choices=["auto", "none", "model"],
                        help="GPU residency: auto keeps every part in use on the GPU while they fit, else moves "
                             "whole models; none never moves one out; model keeps one big part at a time")
    parser.add_argument("--fp8", action="store_true",
                        help="store the decoders' DiT weights in fp8 (half the memory; up-cast per layer)")


def _add_batch_args(parser: argparse.ArgumentParser, flag: str, what: str) -> None:
    """The batch form of a command: a file of items (docs/batch.md)."""
    parser.add_argument(flag, default=None, metavar="FILE",
                        help=f"batch work: a file of {what} (docs/batch.md); resumable, sharded over torchrun ranks")
    parser.add_argument("--batch-size", type=int, default=4, help="with " + flag + ": items per model call")
    parser.add_argument("--skip-bad", action="store_true",
                        help=f"with {flag}: report bad items (file:line) and go on (default: a bad item stops the "
                             "run, before the model loads where it can)")


def _add_image_out_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True,
                        help="output PNG path (written atomically); with a file of items, the output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--guidance", "--cfg", dest="guidance", type=float, default=None,
                        help="classifier-free guidance scale (default: the model's own; --cfg is the old spelling)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)


def _inference_commands(sub) -> None:
    p = sub.add_parser("understand", help="answer a question about an image, or a text-only question")
    _add_model_args(p)
    p.add_argument("--image", action="append", default=[],
                   help="input image (repeat for several; none: a text-only question)")
    p.add_argument("--prompt", default=None, help='the question ("" with --image: describe the image)')
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); above 0: sample")
    p.add_argument("--top-k", type=int, default=0, help="sampling: keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability (1: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with --questions: of the first line)")
    _add_batch_args(p, "--questions", "questions (JSONL: image, prompt)")
    p.add_argument("--out", default=None, metavar="FILE.jsonl", help="with --questions: the answers file")
    p.set_defaults(handler=_call("infer", "understand"))

    p = sub.add_parser("generate", help="text-to-image generation")
    _add_model_args(p)
    p.add_argument("--prompt", default=None)
    _add_batch_args(p, "--prompts", "prompts (one per line, or JSONL: prompt, seed, height, width, id)")
    _add_image_out_args(p)
    p.set_defaults(handler=_call("infer", "generate"))

    p = sub.add_parser("edit", help="instruction-based image editing")
    _add_model_args(p)
    p.add_argument("--image", default=None)
    p.add_argument("--prompt", default=None)
    p.add_argument("--decoder", default="editing", choices=["editing", "generation"])
    _add_batch_args(p, "--edits", "edits (JSONL: image, prompt, decoder, seed, id)")
    _add_image_out_args(p)
    p.set_defaults(handler=_call("infer", "edit"))

    p = sub.add_parser("chat", help="interactive multi-turn chat (type /image PATH to attach an image)")
    _add_model_args(p)
    p.add_argument("--out-dir", default="chat_images", help="where generated images are saved")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_call("infer", "chat"))

    p = sub.add_parser("embed", help="predicted image embeddings (safetensors, tensor 'image_embeds')")
    _add_model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", default=None, help="source image: editing template instead of generation")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.set_defaults(handler=_call("infer", "embed"))

    _serve_command(sub)

    p = sub.add_parser("demo",
                       help="understand, generate and edit ShapesWorld examples with the bundled model")
    _add_model_args(p)
    p.add_argument("--out", default="demo_out", help="output folder for the contact sheet and images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_call("demo", "demo"))


def _serve_command(sub) -> None:
    from nexusgen.commands.serve import add_setting_options  # a dataclass only: no web framework loads here

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API and web UI (needs nexusgen[serve])",
                       description="Serve a model over HTTP: /v1/chat/completions, /v1/images/generations, "
                                   "/v1/images/edits, /v1/models, /health, /ready, /metrics, and a web UI at /.")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route but /health "
                   "(default: the NEXUSGEN_API_KEY variable, else none)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="server log level (info logs one line per request: method, path, status; never bodies)")
    add_setting_options(p)
    p.set_defaults(handler=_call("serve", "serve"))


def _tooling_commands(sub) -> None:
    p = sub.add_parser("convert", help="convert an official Nexus-Gen folder into a nexusgen model folder")
    p.add_argument("official_dir")
    p.add_argument("out_dir")
    p.add_argument("--vae-norm-groups", type=int, default=32,
                   help="GroupNorm groups of ae.safetensors' VAE (not stored in the file; FLUX: 32)")
    p.add_argument("--flux", default=None, metavar="FLUX_DIR",
                   help="FLUX.1-dev folder: CLIP pooled vector and the T5 negative branch (official CFG 3); "
                        "default: looked for next to OFFICIAL_DIR")
    p.add_argument("--negative-prompt", default="", help='negative prompt of the CFG branch (default "")')
    p.set_defaults(handler=_call("convert", "convert"))

    p = sub.add_parser("export-official", help="write a nexusgen model folder in the official Nexus-GenV2 layout")
    p.add_argument("model_dir", help="a nexusgen model folder (or a training run directory: its final/)")
    p.add_argument("out_dir", help="the folder to write (must not exist)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32", "float16"],
                   help="tensor dtype of the files (default: as stored; the official files are bfloat16)")
    p.set_defaults(handler=_call("convert", "export_official"))

    p = sub.add_parser("assemble", help="an untrained model folder from stock Qwen2.5-VL-Instruct + FLUX.1-dev")
    p.add_argument("--qwen", required=True, metavar="QWEN_DIR", help="stock Qwen2.5-VL-Instruct folder")
    p.add_argument("--flux", required=True, metavar="FLUX_DIR", help="FLUX.1-dev folder (diffusers layout)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="the model folder to write")
    p.add_argument("--negative-prompt", default="", help='negative prompt of the CFG branch (default "")')
    p.add_argument("--device", default=None, help="where T5 runs once (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the newly initialised weights")
    p.set_defaults(handler=_call("convert", "assemble"))

    p = sub.add_parser("train", help="run a training recipe (also under torchrun)")
    p.add_argument("recipe", help="recipe name, e.g. tiny-ar, tiny-generation_decoder or shapes-mini (the "
                   "decoder stages' old names gen_decoder / edit_decoder are accepted for one release)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by dotted path (repeatable)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint (an error if there is none)")
    resume.add_argument("--resume-if-possible", action="store_true",
                        help="continue from the newest complete checkpoint, or start if there is none")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) invalid data records")
    p.add_argument("--image-root", default=None, metavar="DIR",
                   help="folder relative image / embedding paths in data.paths resolve against (= --set "
                        "data.image_root=DIR; the official files are relative to their repository root)")
    p.add_argument("--start-at", metavar="STAGE", help="multi-stage recipes: begin at STAGE, from the folder "
                   "given by --set STAGE.stage.parent=FOLDER")
    p.add_argument("--dry-run", action="store_true", help="build each stage on the meta device and print its "
                   "parameters and memory per GPU (DDP / FSDP2, checkpointing, LoRA) as JSON; trains nothing")
    p.add_argument("--ranks", type=int, default=8, help="--dry-run: the number of GPUs planned besides 1")
    p.add_argument("--seq-len", type=int, default=4096, help="--dry-run: tokens per AR sample (upstream's maximum)")
    p.set_defaults(handler=_call("train", "train"))

    p = sub.add_parser("export-checkpoint", help="write a training run's checkpoint as a model folder")
    p.add_argument("run_dir", help="the run directory (--out of nexusgen train)")
    p.add_argument("--out", required=True, help="the model folder to write (must not exist)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--no-ema", action="store_true", help="export the trained weights, not their EMA")
    p.set_defaults(handler=_call("train", "export_checkpoint"))

    p = sub.add_parser("prepare-embeds", help="precompute decoder-training embeddings (resumable)")
    p.add_argument("--data", required=True, help="message-format JSONL")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--kind", required=True, choices=["generate", "edit", "gen"],
                   help="which decoder's embeddings: generate (gen: the old spelling) or edit")
    p.add_argument("--out", required=True, help="output folder (JSONL + safetensors)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--image-root", default=None,
                   help="folder relative image paths resolve against (default: the JSONL's folder; "
                        "official upstream files are relative to their repository root)")
    p.set_defaults(handler=_call("data", "prepare_embeds"))

    p = sub.add_parser("eval", help="evaluation")
    ev = p.add_subparsers(dest="eval_task", required=True)
    q = ev.add_parser("shapes", help="ShapesWorld benchmark -> DIR/results.json")
    q.add_argument("--out", required=True)
    q.add_argument("--model", default=DEFAULT_MODEL)
    q.add_argument("--num", type=int, default=100)
    q.add_argument("--seed", type=int, default=1000)
    q.add_argument("--score-only", action="store_true", help="rescore saved artifacts without the model")
    q.add_argument("--decoder", default="editing", choices=["editing", "generation"])
    q.add_argument("--tasks", default="understand,generate,edit",
                   help="comma-separated subset of understand,generate,edit (or their results.json sections "
                        "understanding,generation,editing)")
    q.add_argument("--steps", type=int, default=None,
                   help="denoising steps of every decoder (default: the model's own, per decoder)")
    q.add_argument("--guidance", type=float, default=None,
                   help="generation guidance scale (default: the model's own; needs a negative branch)")
    q.add_argument("--edit-guidance", type=float, default=None,
                   help="editing-decoder guidance scale (default: the model's own)")
    q.add_argument("--embeds", default="predicted", choices=["predicted", "ground-truth"],
                   help="generation and editing from the AR model's predictions, or from the embeddings of each "
                        "item's true image (the decoders' ceiling)")
    q.add_argument("--prompt-style", default="short", choices=["short", "detailed"],
                   help="generation prompts: GenEval-like short ones, or detailed ones that pin the scene down")
    q.set_defaults(handler=_call("eval", "shapes"))
    _benchmark_commands(ev)

    p = sub.add_parser("bench", help="benchmarks; JSON on stdout")
    p.add_argument("what", choices=["ar", "decoder", "e2e", "train", "serve", "gpu", "assemble"])
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes (for smoke tests)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model for e2e and serve")
    p.add_argument("--steps", type=int, default=None, help="generation steps for e2e (default: the model's own)")
    g = p.add_argument_group("gpu and assemble (real widths; defaults: the real model on one GPU)")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bf16 on cuda, fp32 on cpu")
    g.add_argument("--blocks", type=_positive, default=None,
                   help="depth of every transformer (LLM, ViT, DiT double and single; default: real)")
    g.add_argument("--vocab", type=_positive, default=None, help="LLM vocabulary (default: real 152064)")
    g.add_argument("--intermediate", type=_positive, default=None, help="LLM MLP width (default: real 18944)")
    g.add_argument("--sizes", type=_sizes, default=[512, 1024], help="DiT / VAE image sizes (default 512,1024)")
    g.add_argument("--e2e-size", type=_positive, default=1024)
    g.add_argument("--e2e-steps", type=_positive, default=50)
    g.add_argument("--negative-tokens", type=_positive, default=512, help="T5 negative context length")
    g.add_argument("--edit-image", type=_positive, default=512, help="side of the edit source image")
    g.add_argument("--decode-tokens", type=_positive, default=64, help="tokens of the text decode measurement")
    g.add_argument("--repeats", type=_positive, default=5, help="timed calls per measurement")
    g.add_argument("--warmup", type=int, default=1, help="untimed calls before each measurement")
    p.set_defaults(handler=_call("bench", "bench"))


def _add_export_args(parser: argparse.ArgumentParser, *, edit: bool = False) -> None:
    parser.add_argument("--out", required=True, help="output folder (a rerun skips finished items)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--seed", type=int, default=0, help="noise seed (sample k of an item: seed + k)")
    parser.add_argument("--batch-size", type=int, default=16, help="items per model call")
    if edit:
        parser.add_argument("--decoder", default="editing", choices=["editing", "generation"])


def _benchmark_commands(ev) -> None:
    """The public benchmarks: exports in each benchmark's own layout, and the understanding scorers."""
    q = ev.add_parser("geneval-export", help="GenEval: prompt folders of samples for its detector-based scorer")
    q.add_argument("--prompts", required=True, help="GenEval evaluation_metadata.jsonl")
    q.add_argument("--images-per-prompt", type=int, default=4)
    _add_export_args(q)
    q.set_defaults(handler=_call("eval", "geneval_export"))
    q = ev.add_parser("dpg-export", help="DPG-Bench: 2x2 grids of 4 samples, named as compute_dpg_bench.py reads")
    q.add_argument("--prompts", required=True, help="DPG-Bench prompts folder (one <item_id>.txt per prompt)")
    q.add_argument("--resolution", type=int, default=None, help="tile side in pixels (default: the model's size)")
    _add_export_args(q)
    q.set_defaults(handler=_call("eval", "dpg_export"))
    q = ev.add_parser("imgedit-export", help="ImgEdit-Bench: OUT/<key>.png for its GPT judge")
    q.add_argument("--edits", required=True, help="ImgEdit single-turn JSON (e.g. Basic/basic_edit.json)")
    q.add_argument("--images", required=True, help="the original images folder (origin_img_root)")
    _add_export_args(q, edit=True)
    q.set_defaults(handler=_call("eval", "imgedit_export"))
    q = ev.add_parser("gedit-export", help="GEdit-Bench: OUT/fullset/<task_type>/<lang>/<key>.png for VIEScore")
    q.add_argument("--data", required=True, help="the GEdit-Bench dataset folder (its parquet files)")
    q.add_argument("--area", type=int, default=512 * 512, help="output pixels (aspect of the input, sides /32)")
    _add_export_args(q, edit=True)
    q.set_defaults(handler=_call("eval", "gedit_export"))
    q = ev.add_parser("understand", help="MME / MMBench / MMMU / POPE: answer, then score with the official rules")
    q.add_argument("--benchmark", required=True, choices=["mme", "mmbench", "mmmu", "pope"])
    q.add_argument("--data", required=True, help="the benchmark's published files (folder, or MMBench's .tsv)")
    q.add_argument("--out", required=True, help="folder for answers.jsonl, official answer files, results.json")
    q.add_argument("--model", default=DEFAULT_MODEL)
    q.add_argument("--batch-size", type=int, default=16, help="questions per model call")
    q.add_argument("--max-new-tokens", type=int, default=16)
    q.add_argument("--split", default="validation", help="MMMU split (validation or dev)")
    q.add_argument("--image-root", default=None, help="POPE: the COCO val2014 folder (default: --data)")
    q.add_argument("--score-only", action="store_true", help="rescore saved answers without the model")
    q.set_defaults(handler=_call("eval", "understand"))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _sizes(text: str) -> list[int]:
    sizes = [_positive(part) for part in text.split(",")]
    if any(size % 16 for size in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be multiples of 16, got {text}")
    return sizes


def error_line(err: Exception, args: argparse.Namespace) -> str:
    """One line for a user error. An OS error about a file inside the command's output names that output
    (the user's path), never the temporary file nexusgen was writing."""
    text = " ".join(str(err).split())
    filename = getattr(err, "filename", None)
    if not isinstance(err, OSError) or filename is None or type(err).__name__ == "OutputError":
        return text
    reason = err.strerror or text
    for option in OUTPUT_OPTIONS:
        out = getattr(args, option, None)
        if isinstance(out, str) and _inside(str(filename), out):
            return f"{out}: cannot write ({reason})"
    return f"{filename}: {reason}"


def _inside(path: str, out: str) -> bool:
    """`path` is `out`, inside it, or one of its temporary siblings (`.OUT.tmp-...`, `.OUT.old-...`)."""
    path, out = os.path.abspath(path), os.path.abspath(out)
    sibling = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.")
    return path == out or path.startswith(out + os.sep) or path.startswith(sibling)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nexusgen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _inference_commands(sub)
    _tooling_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    openmp.configure()  # before torch loads: spin on an idle CPU, wait passively on a busy one
    try:
        result = args.handler(args)
    except USER_ERRORS as err:
        print(f"nexusgen {args.command}: error: {error_line(err, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nexusgen {args.command}: interrupted", file=sys.stderr)
        return 130
    if isinstance(result, dict):  # benchmarks and reports print JSON
        print(json.dumps(result, indent=2))
    return 0 if not isinstance(result, int) else result


if __name__ == "__main__":
    sys.exit(main())
