"""Training configuration: dataclasses are the only schema.

A run is fully described by one `TrainConfig`. Recipes (`nexusgen/recipes/`) are Python functions that
return a complete one; the command line changes it only through dotted-path overrides
(`--set optim.grad_clip=0.5`), parsed by the type of the field they name. The resolved config is
written to `RUN_DIR/config.json`.

The top-level names `max_steps`, `save_every`, `batch_size` (the *global* batch, split across ranks and
accumulation micro-steps), `lr` and `seed` always exist, so that the most common overrides are short.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

STAGES = ("vae", "vlm", "ar", "generation_decoder", "editing_decoder")
STAGE_ALIASES = {"gen_decoder": "generation_decoder", "edit_decoder": "editing_decoder"}
"""The decoder stages' names before they took their parts' names; accepted (and rewritten) for one release."""
# Options measured on shapes-mini and removed because they did not help (docs/training-log.md has
# the numbers); a stored config that leaves them off still loads, one that turns them on is refused.
REMOVED_STAGE_OPTIONS = {
    "reference_dropout_prob": "stage.reference_dropout_prob (zeroing some references in editing_decoder "
                              "training) was removed: it did not make the decoder follow the target",
}
REMOVED_MODEL_OPTIONS = {
    "rope_theta": "stage.model.rope_theta (re-basing the LLM's M-RoPE) was removed: it did not help",
    "input_image_positions": "stage.model.input_image_positions (input image place embeddings) was removed: "
                             "it did not help",
    "add_layers": "stage.model.add_layers (identity layers added to a trained LLM) was removed: it did not help",
    "question_first": "stage.model.question_first (the question before the image) was removed: it did not help",
}


def current_name(name: str) -> str:
    """A stage or recipe name with the decoder stages' old names replaced (`tiny-gen_decoder` ->
    `tiny-generation_decoder`, `edit_decoder_more2` -> `editing_decoder_more2`); other names unchanged."""
    for old, new in STAGE_ALIASES.items():
        name = name.replace(old, new)
    return name


@dataclass
class OptimConfig:
    """AdamW and the gradient step around it."""

    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    weight_decay: float = 0.0
    """Decoupled weight decay; never applied to biases, norms and embeddings-like 1-D tensors."""
    grad_clip: float = 1.0
    """Max global L2 norm of the gradients; 0 disables clipping."""
    grad_accum_steps: int = 1
    """Micro-steps per optimiser step; the per-rank batch is split into this many micro-batches."""

    def __post_init__(self):
        if self.grad_accum_steps < 1:
            raise ValueError(f"optim.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0, got {self.grad_clip}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then cosine decay or constant."""

    kind: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    """Cosine floor as a fraction of `lr` (reached at `max_steps`)."""

    def __post_init__(self):
        if self.kind not in ("cosine", "constant"):
            raise ValueError(f"schedule.kind must be 'cosine' or 'constant', got {self.kind!r}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"bad schedule: warmup_steps={self.warmup_steps}, "
                             f"min_lr_ratio={self.min_lr_ratio}")


@dataclass
class CheckpointConfig:
    """Checkpointing besides `TrainConfig.save_every`."""

    keep_last: int = 3
    """Complete checkpoints kept on disk (older ones are deleted after a successful save)."""
    export_final: bool = True
    """Write RUN_DIR/final/ (a model folder) after the last step."""

    def __post_init__(self):
        if self.keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")


@dataclass
class DistConfig:
    """Data parallelism. Under `torchrun` the world comes from the environment; alone it is 1 process."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """'ddp' (replicated weights) or 'fsdp' (FSDP2 `fully_shard`, sharded weights and optimiser)."""
    backend: str = "auto"
    """Process-group backend: 'auto' = nccl on GPU, gloo on CPU."""
    timeout_s: int = 600

    def __post_init__(self):
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"dist.strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on the trainable part; merged into the weights on export."""

    rank: int = 0
    """0 disables LoRA (full fine-tuning of the trainable parts)."""
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)
    """Module-name suffixes to adapt (peft `target_modules`); empty = the stage's default list."""

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0, got {self.rank}")


@dataclass
class DataConfig:
    """Where a stage's samples come from."""

    source: Literal["auto", "generated", "jsonl", "embeds"] = "auto"
    """'auto': 'generated' without `paths`, 'jsonl' with them (setting `data.paths` switches to the files).
    'generated': in-memory procedural samples only (tiny recipes, tests); `paths` must stay empty.
    'jsonl': message-format JSONL files (the official `llm_dataset.jsonl`, `gen_decoder_dataset.jsonl`,
    `edit_decoder_dataset.jsonl`); the decoder stages use the precomputed embeddings that the records name
    when every file names them (`embed_path`, or `embed_source` + `embed_target`) and compute them with the
    frozen AR model otherwise. 'embeds': JSONL files whose records must name precomputed embeddings."""
    paths: list[str] = field(default_factory=list)
    """Files of the mixture (jsonl / embeds sources)."""
    image_root: str | None = None
    """Folder that relative image and embedding paths in the files resolve against; None = each file's own
    folder. The official example files are relative to their repository root: pass that folder."""
    weights: list[float] = field(default_factory=list)
    """Mixture weights, one per path (empty = equal)."""
    num_samples: int = 256
    """Size of a generated dataset (it repeats in epochs, reshuffled per epoch)."""
    image_size_px: int = 32
    """Side of generated / decoder-target images."""
    tasks: list[str] = field(default_factory=lambda: ["understand", "generate", "edit"])
    """Generated sample kinds for AR-style stages."""
    reference_image_px: int = 0
    """editing_decoder: side of the square the source image is resized to before the AR model encodes it
    as the reference; must equal the model's `reference_image_px` (nexusgen.json). 0: the bounded
    input size."""
    world: str = "synthetic"
    """Generator behind `source="generated"` samples: "synthetic", the built-in coloured rectangles (fast
    smoke runs), or a world registered in `nexusgen.data.worlds`, e.g. "shapes" (ShapesWorld, the miniature
    model's training data, registered by `nexusgen.recipes`)."""
    world_options: dict[str, Any] = field(default_factory=dict)
    """The world's own options (ShapesWorld: `SampleConfig` fields such as prompt_style, zh_fraction);
    image_size and tasks come from image_size_px and tasks."""
    skip_bad: bool = False
    """Skip (and count) invalid records instead of stopping."""

    def __post_init__(self):
        if self.source not in ("auto", "generated", "jsonl", "embeds"):
            raise ValueError(f"data.source must be auto|generated|jsonl|embeds, got {self.source!r}")
        if not self.world:
            raise ValueError("data.world must name a world: 'synthetic' or a registered one")
        if self.weights and len(self.weights) != len(self.paths):
            raise ValueError(f"data.weights has {len(self.weights)} entries for {len(self.paths)} paths")

    def check_files(self) -> None:
        """Rules between fields, checked once all overrides are applied (`apply_overrides`, `train`):
        files are never silently ignored.

        Raises:
            ValueError: paths or an image root with source 'generated', or an image root without paths.
        """
        if self.source == "generated" and (self.paths or self.image_root is not None):
            given = "data.paths" if self.paths else "data.image_root"
            raise ValueError(f"{given} is set but this recipe trains on generated samples (data.source="
                             f"'generated'); set data.source=jsonl to train on files")
        if self.image_root is not None and not self.paths:
            raise ValueError("data.image_root is set but data.paths is empty: give the files too")

    @property
    def uses_files(self) -> bool:
        """True when the samples come from `paths` (source jsonl / embeds, or auto with paths)."""
        return self.source in ("jsonl", "embeds") or (self.source == "auto" and bool(self.paths))

    def files(self, stage: str) -> list[str]:
        """`paths`, checked to be there and to exist (before any model is built).

        Raises:
            ValueError: no files although the source needs them.
            FileNotFoundError: a file or the image root does not exist.
        """
        if not self.paths:
            raise ValueError(f"stage {stage} with data.source={self.source!r} needs files: "
                             f"--set data.paths='[\"data.jsonl\"]'")
        for path in self.paths:
            if not Path(path).is_file():
                raise FileNotFoundError(f"data.paths: no such file {path}")
        if self.image_root is not None and not Path(self.image_root).is_dir():
            raise FileNotFoundError(f"data.image_root: no such folder {self.image_root}")
        return list(self.paths)


@dataclass
class StageModelConfig:
    """`stage.model`: the settings of the trained part that a stage may choose.

    Each leaves the shapes of the weights alone, so it applies to a part built from `stage.preset` and to
    one loaded from `stage.parent` alike (the part's size comes from the preset: presets are data). None
    keeps the part's own setting. Set them with `--set stage.model.image_feed=predicted` (or
    `--set 'stage.model={"image_feed": "predicted"}'`).
    """

    removed_options: ClassVar[dict[str, str]] = REMOVED_MODEL_OPTIONS

    image_feed: Literal["prefill", "predicted"] | None = None
    """vlm, ar: what the LLM reads at an answer image's token positions (`ARConfig.image_feed`): "prefill"
    (Nexus-Gen: the learnt prefill table, all N embeddings in one pass) or "predicted" (standard AR, the
    paper's ablation: ground-truth embeddings in training, its own predictions fed back at inference)."""
    generation_context_ids: Literal["zero", "grid"] | None = None
    """generation_decoder: RoPE ids of the context tokens (`DecoderConfig.generation_context_ids`): "zero"
    (upstream) or "grid" (each token placed on the image grid, as the editing decoder's target tokens)."""
    embedded_guidance: float | None = None
    """generation_decoder, editing_decoder: the value fed to the DiT's guidance embedder
    (`DecoderConfig.embedded_guidance`; upstream 3.5)."""

    def __post_init__(self):
        for name, allowed in (("image_feed", ("prefill", "predicted")), ("generation_context_ids", ("zero", "grid"))):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"stage.model.{name} must be one of {allowed}, got {value!r}")
        if self.embedded_guidance is not None and not self.embedded_guidance > 0:
            raise ValueError(f"stage.model.embedded_guidance must be > 0, got {self.embedded_guidance}")

    def chosen(self) -> dict[str, Any]:
        """The settings this stage sets (the fields that are not None)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


# Which stages each stage.model setting is for.
_MODEL_SETTING_STAGES = {"image_feed": ("vlm", "ar"), "generation_context_ids": ("generation_decoder",),
                         "embedded_guidance": ("generation_decoder", "editing_decoder")}


@dataclass
class StageConfig:
    """What makes one training stage different from another: all data, no code."""

    removed_options: ClassVar[dict[str, str]] = REMOVED_STAGE_OPTIONS

    name: str = "vae"
    """One of vae, vlm, ar, generation_decoder, editing_decoder (gen_decoder and edit_decoder, the old
    names, are accepted for one release and rewritten)."""
    parent: str | None = None
    """Where the model starts: a previous run dir (its final/), a nexusgen model folder, an official
    Nexus-GenV2 folder, a stock Qwen2.5-VL-Instruct folder, a FLUX.1-dev or FluxTransformer2DModel folder
    (`stages/parent.py`), or None = `preset`."""
    ar_parent: str | None = None
    """Decoder stages whose `parent` has no AR model (a FLUX.1-dev folder): where the AR model comes from --
    a stock Qwen2.5-VL-Instruct folder, an official Nexus-GenV2 folder, or a nexusgen model folder / run
    directory with autoregressive/. It computes the embeddings, sets the new adapter's / merger's widths and
    gives the merger its layer 0; its parts that the stage does not train complete the export."""
    preset: str = "tiny"
    """Model preset used for the parts that the parent does not provide."""
    model: StageModelConfig = field(default_factory=StageModelConfig)
    """Settings of the trained part (`StageModelConfig`)."""
    trainable: list[str] = field(default_factory=list)
    """Sub-module name prefixes to train; empty = the stage's default. Everything else is frozen."""
    loss_weights: dict[str, float] = field(default_factory=dict)
    """Weights of the stage's loss terms (e.g. {"token": 3.0, "image": 3.0}); missing = stage default."""
    ema_decay: float = 0.0
    """EMA of the trainable weights (used for the DiT); 0 disables it. The export uses the EMA weights."""
    ema_warmup: bool = True
    """Ramp the EMA decay up from 0.18 (`train.ema.EMA`), so the starting weights fade out of the average;
    False = constant decay from the first step."""
    cond_dropout_prob: float = 0.0
    """Decoder stages: probability of zeroing a sample's image embeddings, which trains the null branch
    that classifier-free guidance without T5 needs (flow.loss.drop_condition)."""
    true_target_prob: float = 0.0
    """editing_decoder: probability of conditioning a sample on the true edited image's embeddings instead
    of the AR model's prediction of them (0 = upstream), so the decoder learns to follow the target rather
    than fall back on the source where the prediction is unsure."""
    gradient_checkpointing: bool = False
    ce_reduction: str = "token"
    """AR stages: "token" = CE averaged over every answer token of a batch (upstream); "sample" = over
    each sample's answer tokens, then over samples, so a one-word answer weighs as much as a caption."""

    def __post_init__(self):
        self.name = STAGE_ALIASES.get(self.name, self.name)
        if isinstance(self.model, dict):  # a JSON object
            self.model = config_from_dict(StageModelConfig, self.model)
        if self.ce_reduction not in ("token", "sample"):
            raise ValueError(f"stage.ce_reduction must be 'token' or 'sample', got {self.ce_reduction!r}")
        if self.name not in STAGES:
            raise ValueError(f"stage.name must be one of {STAGES}, got {self.name!r}")
        for field_name in ("cond_dropout_prob", "ema_decay"):
            self._check_fraction(field_name, one_allowed=False)
        self._check_fraction("true_target_prob", one_allowed=True)
        if self.true_target_prob and self.name != "editing_decoder":
            raise ValueError(f"stage.true_target_prob is for stage editing_decoder, not {self.name!r}")
        for setting in self.model.chosen():
            if self.name not in _MODEL_SETTING_STAGES[setting]:
                raise ValueError(f"stage.model.{setting} is for stage(s) {', '.join(_MODEL_SETTING_STAGES[setting])}, "
                                 f"not {self.name!r}")

    def _check_fraction(self, field_name: str, *, one_allowed: bool) -> None:
        value = getattr(self, field_name)
        if not (0.0 <= value <= 1.0 if one_allowed else 0.0 <= value < 1.0):
            raise ValueError(f"stage.{field_name} must be in [0, 1{']' if one_allowed else ')'}, got {value}")


@dataclass
class TrainConfig:
    """One complete training run."""

    stage: StageConfig = field(default_factory=StageConfig)
    max_steps: int = 100
    """Optimiser steps."""
    batch_size: int = 8
    """GLOBAL batch (samples per optimiser step), split evenly across ranks and accumulation steps."""
    lr: float = 1e-4
    """Peak learning rate (0: the weights do not move; the export equals the parent)."""
    seed: int = 0
    save_every: int = 0
    """Checkpoint every this many steps (0 = only the final export)."""
    log_every: int = 1
    eval_every: int = 0
    """Run the stage's evaluation hook every this many steps (0 = never)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """'auto' = bf16 autocast on GPU, fp32 on CPU (bf16 matmul is ~100x slower on our CPUs)."""
    device: str = "auto"
    deterministic: bool = True
    """torch.use_deterministic_algorithms: needed for bitwise-exact resume; turn off for speed on GPU."""
    progress: bool = True
    """Show a progress bar on rank 0 (only when stderr is a terminal)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self):
        for name in ("max_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.save_every < 0 or self.log_every < 1 or self.eval_every < 0:
            raise ValueError(f"bad intervals: save_every={self.save_every}, log_every={self.log_every}, "
                             f"eval_every={self.eval_every}")
        if self.lr < 0:  # 0 is allowed: a run that checks data, parent and export without changing a weight
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto|fp32|bf16, got {self.precision!r}")

    def micro_batch_size(self, world_size: int) -> int:
        """Samples per rank per micro-step; raises ValueError if the global batch does not split evenly."""
        parts = world_size * self.optim.grad_accum_steps
        if self.batch_size % parts:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by world_size ({world_size}) x "
                             f"grad_accum_steps ({self.optim.grad_accum_steps})")
        return self.batch_size // parts


# ----------------------------------------------------------------------------------------------------
# serialisation and overrides


def config_to_dict(config) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)


def config_from_dict(cls, data: dict):
    """Build `cls` from a dict written by `config_to_dict`; unknown keys are a ValueError.

    A key of the class's `removed_options` (those taken out of the package) is dropped where it holds its
    off value (None, False, 0), so that stored configs that predate the removal still load, and is a
    ValueError that names the option where it turns it on."""
    data = _without_removed(cls, data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = config_from_dict(hint, value)
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _without_removed(cls, data: dict) -> dict:
    removed = getattr(cls, "removed_options", {})
    for key in removed.keys() & data.keys():
        if data[key]:
            raise ValueError(removed[key])
    return {k: v for k, v in data.items() if k not in removed}


def save_config(config: TrainConfig, path) -> None:
    from nexusgen.files import write_json

    write_json(config_to_dict(config), path, sort_keys=True)


def load_config(path) -> TrainConfig:
    with open(path) as f:
        return config_from_dict(TrainConfig, json.load(f))


def _parse_value(text: str, hint, current):
    """Parse an override string by the type of the field it sets."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse_value(text, inner[0], current)
    if origin is Literal:
        if text not in [str(a) for a in args]:
            raise ValueError(f"value {text!r} is not one of {list(args)}")
        return next(a for a in args if str(a) == text)
    if hint is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"value {text!r} is not a boolean")
        return text.lower() in ("true", "1", "yes")
    if hint in (int, float, str):
        return hint(text)
    if hint is Any:  # inside a dict[str, Any]: keep the type of the value it replaces
        if current is None or isinstance(current, (str,)):
            return text
        return _parse_value(text, type(current), None) if isinstance(current, (bool, int, float)) \
            else json.loads(text)
    if dataclasses.is_dataclass(hint):  # a whole nested config as JSON: --set 'stage.model={"image_feed": "predicted"}'
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"value {text!r} is not a JSON object")
        return config_from_dict(hint, value)
    if origin in (list, tuple, dict):  # containers are given as JSON: --set data.paths='["a.jsonl"]'
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            example = '{"key": 1.0}' if origin is dict else '["a", "b"]'
            raise ValueError(f"value {text!r} is not JSON; a {origin.__name__} is written like '{example}'") from None
        if not isinstance(value, dict if origin is dict else list):
            raise ValueError(f"value {text!r} is not a JSON {origin.__name__}")
        return tuple(value) if origin is tuple else value
    raise ValueError(f"cannot parse a value of type {hint}")


def apply_override(config, assignment: str):
    """Return a copy of `config` with one `dotted.path=value` override applied.

    Raises:
        ValueError: the assignment has no '=', names no field, or the value does not parse.
    """
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} is not of the form key=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    try:
        return _set_path(config, parts, text)
    except (ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"override {assignment!r}: {err}") from None


def _set_path(obj, parts: list[str], text: str):
    name, rest = parts[0], parts[1:]
    if dataclasses.is_dataclass(obj):
        fields = {f.name for f in dataclasses.fields(obj)}
        if name not in fields:
            removed = getattr(type(obj), "removed_options", {})
            raise ValueError(removed[name] if name in removed else
                             f"{type(obj).__name__} has no field {name!r} (fields: {sorted(fields)})")
        current = getattr(obj, name)
        hint = typing.get_type_hints(type(obj))[name]
        value = _set_path(current, rest, text) if rest else _parse_value(text, hint, current)
        return dataclasses.replace(obj, **{name: value})
    if isinstance(obj, dict):  # only keys that exist: a typo must not silently add a new one
        if name not in obj:
            raise ValueError(f"no key {name!r} (keys: {sorted(obj)})")
        value = _set_path(obj[name], rest, text) if rest else _parse_value(text, Any, obj[name])
        return {**obj, name: value}
    raise ValueError(f"cannot descend into {name!r} of a {type(obj).__name__}")


def apply_overrides(config: TrainConfig, assignments: list[str]) -> TrainConfig:
    """Apply `--set` overrides in order, then check the rules between data fields; see `apply_override`."""
    for assignment in assignments:
        config = apply_override(config, assignment)
    config.data.check_files()
    return config
