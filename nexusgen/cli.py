"""The `nexusgen` command line: one thin adapter over the Python API.

Every subcommand parses its arguments here and hands them to a function that lives next to the code it
runs (imported lazily, so `nexusgen --help` stays fast). Bad input raises `ValueError` (or an OS error)
at the boundary; `main` turns it into one clear line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from nexusgen import openmp

DEFAULT_MODEL = "shapes-mini"

# Exceptions that mean "the user's input is wrong": one line, exit 2. Anything else is a bug and keeps
# its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)


def _call(target: str):
    """Return a handler that imports `module:function` on use and calls it with the parsed args."""

    def handler(args: argparse.Namespace):
        module_name, function_name = target.split(":")
        return getattr(importlib.import_module(module_name), function_name)(args)

    return handler


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="bundled model name, a nexusgen model folder, or an official Nexus-GenV2 folder")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="compute dtype (default: float32 on CPU, bfloat16 on GPU)")


def _add_image_out_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output PNG path (written atomically)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)


def _inference_commands(sub) -> None:
    p = sub.add_parser("understand", help="answer a question about an image")
    _add_model_args(p)
    p.add_argument("--image", required=True, action="append", help="input image (repeat for several)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.set_defaults(handler=_call("nexusgen.pipelines.commands:understand"))

    p = sub.add_parser("generate", help="text-to-image generation")
    _add_model_args(p)
    p.add_argument("--prompt", required=True)
    _add_image_out_args(p)
    p.set_defaults(handler=_call("nexusgen.pipelines.commands:generate"))

    p = sub.add_parser("edit", help="instruction-based image editing")
    _add_model_args(p)
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--decoder", default="editing", choices=["editing", "generation"])
    _add_image_out_args(p)
    p.set_defaults(handler=_call("nexusgen.pipelines.commands:edit"))

    p = sub.add_parser("chat", help="interactive multi-turn chat (type /image PATH to attach an image)")
    _add_model_args(p)
    p.add_argument("--out-dir", default="chat_images", help="where generated images are saved")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_call("nexusgen.pipelines.commands:chat"))

    p = sub.add_parser("embed", help="predicted image embeddings (safetensors, tensor 'image_embeds')")
    _add_model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", default=None, help="source image: editing template instead of generation")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.set_defaults(handler=_call("nexusgen.pipelines.commands:embed"))

    p = sub.add_parser("demo",
                       help="understand, generate and edit ShapesWorld examples with the bundled model")
    _add_model_args(p)
    p.add_argument("--out", default="demo_out", help="output folder for the contact sheet and images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_call("nexusgen.pipelines.commands:demo"))


def _tooling_commands(sub) -> None:
    p = sub.add_parser("convert", help="convert an official Nexus-Gen folder into a nexusgen model folder")
    p.add_argument("official_dir")
    p.add_argument("out_dir")
    p.set_defaults(handler=_call("nexusgen.convert.official:convert_command"))

    p = sub.add_parser("train", help="run a training recipe (also under torchrun)")
    p.add_argument("recipe", help="recipe name, e.g. tiny-ar or shapes-mini")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by dotted path (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) invalid data records")
    p.add_argument("--start-at", metavar="STAGE", help="multi-stage recipes: begin at STAGE, from the folder "
                   "given by --set STAGE.stage.parent=FOLDER")
    p.set_defaults(handler=_call("nexusgen.train.command:train_command"))

    p = sub.add_parser("export-checkpoint", help="write a training run's checkpoint as a model folder")
    p.add_argument("run_dir", help="the run directory (--out of nexusgen train)")
    p.add_argument("--out", required=True, help="the model folder to write (must not exist)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--no-ema", action="store_true", help="export the trained weights, not their EMA")
    p.set_defaults(handler=_call("nexusgen.train.command:export_checkpoint_command"))

    p = sub.add_parser("prepare-embeds", help="precompute decoder-training embeddings (resumable)")
    p.add_argument("--data", required=True, help="message-format JSONL")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--kind", required=True, choices=["gen", "edit"])
    p.add_argument("--out", required=True, help="output folder (JSONL + safetensors)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--image-root", default=None,
                   help="folder relative image paths resolve against (default: the JSONL's folder; "
                        "official upstream files are relative to their repository root)")
    p.set_defaults(handler=_call("nexusgen.data.prepare:prepare_command"))

    p = sub.add_parser("eval", help="evaluation")
    ev = p.add_subparsers(dest="eval_task", required=True)
    q = ev.add_parser("shapes", help="ShapesWorld benchmark -> DIR/results.json")
    q.add_argument("--out", required=True)
    q.add_argument("--model", default=DEFAULT_MODEL)
    q.add_argument("--num", type=int, default=100)
    q.add_argument("--seed", type=int, default=1000)
    q.add_argument("--score-only", action="store_true", help="rescore saved artifacts without the model")
    q.add_argument("--decoder", default="editing", choices=["editing", "generation"])
    q.add_argument("--tasks", default="understanding,generation,editing",
                   help="comma-separated subset of understanding,generation,editing")
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
    q.set_defaults(handler=_call("nexusgen.eval.shapes:eval_command"))
    q = ev.add_parser("geneval-export", help="write GenEval's folder layout for a prompts file")
    q.add_argument("--prompts", required=True, help="GenEval metadata JSONL (one prompt object a line)")
    q.add_argument("--out", required=True)
    q.add_argument("--model", default=DEFAULT_MODEL)
    q.add_argument("--images-per-prompt", type=int, default=4)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(handler=_call("nexusgen.eval.geneval:export_command"))

    p = sub.add_parser("bench", help="benchmarks; JSON on stdout")
    p.add_argument("what", choices=["ar", "decoder", "e2e", "train"])
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes (for smoke tests)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model for e2e")
    p.add_argument("--steps", type=int, default=None, help="generation steps for e2e (default: the model's own)")
    p.set_defaults(handler=lambda args: _call(f"nexusgen.bench.{args.what}:run")(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexusgen", description=__doc__.splitlines()[0])
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
        print(f"nexusgen {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nexusgen {args.command}: interrupted", file=sys.stderr)
        return 130
    if isinstance(result, dict):  # benchmarks and reports print JSON
        print(json.dumps(result, indent=2))
    return 0 if not isinstance(result, int) else result


if __name__ == "__main__":
    sys.exit(main())
