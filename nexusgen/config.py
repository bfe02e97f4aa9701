"""The model-folder config (`nexusgen.json`), the model presets, and the device / dtype policy.

A model folder (docs/architecture.md §4) holds one sub-folder per part, each with its own config
next to its weights (`autoregressive/`: `ARConfig`; `generation_decoder/`, `editing_decoder/`:
`DecoderConfig`; `vae/`: the diffusers config, `VAEConfig`). `nexusgen.json` holds what belongs to the
model as a whole::

    {"format_version": 1,
     "parts": ["autoregressive", "generation_decoder", "editing_decoder", "vae"],
     "num_output_tokens": 81, "output_grid": [9, 9], "output_image_px": [252, 252],
     "reference_image_px": [504, 504],            # editing reference size; null: the bounded input size
     "templates": {"system_prompt": ..., "user": {...}, "answer_prefixes": {...}},
     "dtype": "bfloat16",                         # dtype the weights were written in
     "sampling": {"num_steps": 50, "edit_num_steps": null,   # null: num_steps for editing too
                  "guidance_scale": 3.0, "edit_guidance_scale": 1.0, "shift": 3.0,
                  "height": 512, "width": 512, "negative": "t5"}}

N, the grids and the templates are *records* of the autoregressive part's own config: the loader checks
that they agree (one source of truth, no silent disagreement). `NexusGenConfig` nests the part configs
(`ARConfig`, `DecoderConfig`, `VAEConfig`, which live next to their parts in `nexusgen.models`).

Negative branch of classifier-free guidance (`SamplingConfig.negative`, see `nexusgen.flow.sampler`):
"t5" (official Nexus-GenV2: T5 embeddings of the negative prompt, precomputed in
`MODEL/negative.safetensors`), "null" (models trained with conditioning dropout: zero image embeddings),
or "none" (no negative branch: only guidance scale 1 is allowed).

Precision policy (docs/architecture.md §6): fp32 on CPU (bf16 matmul is ~100x slower there), bf16 on CUDA.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from nexusgen.models.autoregressive import ARConfig
from nexusgen.models.decoder import DECODER_PRESETS, DecoderConfig
from nexusgen.models.vae import VAE_PRESETS, VAEConfig
from nexusgen.processing.templates import USER_TEMPLATES, model_templates
from nexusgen.validation import check_device, check_dtype

FORMAT_VERSION = 1
PART_NAMES = ("autoregressive", "generation_decoder", "editing_decoder", "vae")
NEGATIVE_KINDS = ("t5", "null", "none")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------------------------
# Device and dtype policy
# ----------------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The compute device: as given, else cuda when available, else cpu.

    Raises:
        ValueError: a device nexusgen does not run on (`nexusgen.validation.check_device`: mps, meta, ...),
            an unparsable device string, or cuda requested without CUDA.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"invalid device {device!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype: as given (name or torch dtype), else bf16 on CUDA and fp32 elsewhere.

    Raises:
        ValueError: an unknown dtype name.
    """
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    check_dtype(dtype)
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------
@dataclass
class SamplingConfig:
    """The decoders' sampling defaults (every pipeline argument of the same name overrides them)."""

    num_steps: int = 50
    """Euler steps (upstream 50)."""
    edit_num_steps: int | None = None
    """Euler steps for the editing decoder; None: `num_steps`. Editing may need more steps than
    generation (shapes-mini: 6 lose generation nothing, editing needs 10)."""
    guidance_scale: float = 1.0
    """True CFG scale for generation (upstream 3.0); 1 disables the negative branch."""
    edit_guidance_scale: float = 1.0
    """True CFG scale for the editing decoder (upstream 1.0, off)."""
    shift: float = 3.0
    """Schedule shift (upstream 3)."""
    height: int = 512
    """Default output height in pixels."""
    width: int = 512
    """Default output width in pixels."""
    negative: str = "none"
    """Negative branch: "t5", "null" or "none" (module docstring)."""

    def __post_init__(self):
        if self.negative not in NEGATIVE_KINDS:
            raise ValueError(f"sampling.negative must be one of {NEGATIVE_KINDS}, got {self.negative!r}")
        for name in ("num_steps", "edit_num_steps"):
            steps = getattr(self, name)
            if steps is not None and (not isinstance(steps, int) or steps < 1):
                raise ValueError(f"sampling.{name} must be an integer >= 1, got {steps!r}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"sampling height/width must be positive, got {self.height}x{self.width}")
        if self.shift <= 0:
            raise ValueError(f"sampling.shift must be positive, got {self.shift}")
        if self.negative == "none" and (self.guidance_scale != 1.0 or self.edit_guidance_scale != 1.0):
            raise ValueError("sampling.negative 'none' allows only guidance scale 1, got "
                             f"{self.guidance_scale} / {self.edit_guidance_scale}")


@dataclass
class NexusGenConfig:
    """Everything a model folder's parts and pipelines need to agree on.

    Attributes:
        ar: the autoregressive model's config (N, output size, templates, Qwen config).
        generation_decoder: config of the generation decoder, None if the model has none.
        editing_decoder: config of the editing decoder, None if the model has none.
        vae: config of the VAE, None if the model has none.
        sampling: the decoders' sampling defaults.
        reference_image_px: (height, width) at which the editing decoder sees the source image (its
            "reference grid" = this / token_px); None: the bounded input size the AR model sees
            (what the `editing_decoder` training stage uses on the fly).
        dtype: dtype name the weights are stored in.
    """

    ar: ARConfig
    generation_decoder: DecoderConfig | None = None
    editing_decoder: DecoderConfig | None = None
    vae: VAEConfig | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reference_image_px: tuple[int, int] | None = None
    dtype: str = "float32"

    def __post_init__(self):
        if isinstance(self.sampling, dict):
            self.sampling = SamplingConfig(**self.sampling)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.reference_image_px is not None:
            self.reference_image_px = tuple(int(x) for x in self.reference_image_px)
            token = self.ar.token_px
            if len(self.reference_image_px) != 2 or any(x <= 0 or x % token for x in self.reference_image_px):
                raise ValueError(f"reference_image_px {self.reference_image_px} must be two positive "
                                 f"multiples of the {token}-px token")
        width = self.ar.hidden_size
        for name in ("generation_decoder", "editing_decoder"):
            part = getattr(self, name)
            if part is not None and part.embed_dim != width:
                raise ValueError(f"{name}.embed_dim {part.embed_dim} != the AR model's embedding width "
                                 f"{width}")
        if self.editing_decoder is not None and self.editing_decoder.merger is None:
            raise ValueError("editing_decoder config has no merger")

    # -- derived --------------------------------------------------------------------------------------
    @property
    def parts(self) -> list[str]:
        """Names of the parts present, in folder order."""
        present = {"autoregressive": True, "generation_decoder": self.generation_decoder is not None,
                   "editing_decoder": self.editing_decoder is not None, "vae": self.vae is not None}
        return [name for name in PART_NAMES if present[name]]

    @property
    def num_output_tokens(self) -> int:
        return self.ar.num_output_tokens

    @property
    def output_grid(self) -> tuple[int, int]:
        return self.ar.output_grid

    @property
    def reference_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of reference tokens, or None when it follows the input image."""
        if self.reference_image_px is None:
            return None
        return self.reference_image_px[0] // self.ar.token_px, self.reference_image_px[1] // self.ar.token_px

    @property
    def image_size(self) -> int:
        """The pixel side the model works at (default output height)."""
        return self.sampling.height

    def templates(self) -> dict:
        """The prompt text the model uses (recorded in nexusgen.json; None fields of `ar` resolved)."""
        system_prompt, answer_prefixes = model_templates(self.ar)
        return {"system_prompt": system_prompt, "user": dict(USER_TEMPLATES), "answer_prefixes": answer_prefixes}

    # -- nexusgen.json --------------------------------------------------------------------------------
    def to_json_dict(self) -> dict:
        """The content of `nexusgen.json` (part configs live in their own folders)."""
        ref = self.reference_image_px
        return {"format_version": FORMAT_VERSION, "parts": self.parts,
                "num_output_tokens": self.num_output_tokens, "output_grid": list(self.output_grid),
                "output_image_px": list(self.ar.output_image_px),
                "reference_image_px": list(ref) if ref is not None else None,
                "templates": self.templates(), "dtype": self.dtype,
                "sampling": dataclasses.asdict(self.sampling)}

    @classmethod
    def from_json_dict(cls, data: dict, *, ar: ARConfig, generation_decoder: DecoderConfig | None = None,
                       editing_decoder: DecoderConfig | None = None, vae: VAEConfig | None = None,
                       source: str = "nexusgen.json") -> NexusGenConfig:
        """Rebuild the config from `nexusgen.json` and the part configs read from their folders.

        Raises:
            ValueError: wrong format version, unknown keys, or a record that disagrees with the parts
                (the message names `source` and the key).
        """
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{source}: key 'format_version' must be {FORMAT_VERSION}, "
                             f"got {data.get('format_version')!r}")
        known = set(cls(ar=ar).to_json_dict())
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}")
        try:
            config = cls(ar=ar, generation_decoder=generation_decoder, editing_decoder=editing_decoder,
                         vae=vae, sampling=SamplingConfig(**data.get("sampling", {})),
                         reference_image_px=data.get("reference_image_px"),
                         dtype=data.get("dtype", "float32"))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from err
        written = config.to_json_dict()
        for key in ("num_output_tokens", "output_grid", "output_image_px", "templates"):
            if key in data and data[key] != written[key]:
                raise ValueError(f"{source}: key {key!r} is {data[key]!r} but the autoregressive part's "
                                 f"config says {written[key]!r}")
        missing = sorted(set(data.get("parts", [])) - set(config.parts))
        if missing:
            raise ValueError(f"{source}: lists part(s) {missing} that the folder does not hold")
        return config

    # -- presets --------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str) -> NexusGenConfig:
        """A config from `PRESETS[name]` (part presets by name plus the model-level fields)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
        preset = copy.deepcopy(PRESETS[name])
        decoder = DECODER_PRESETS[preset["decoder"]]
        return cls(ar=ARConfig.from_preset(preset["ar"], **preset.get("ar_overrides", {})),
                   generation_decoder=copy.deepcopy(decoder), editing_decoder=copy.deepcopy(decoder),
                   vae=copy.deepcopy(VAE_PRESETS[preset["vae"]]),
                   sampling=SamplingConfig(**preset["sampling"]),
                   reference_image_px=preset["reference_image_px"], dtype=preset["dtype"])


# Presets are data: part preset names (nexusgen.models) + the model-level fields.
PRESETS: dict[str, dict] = {
    # Smoke tests and benchmarks: random weights, 64-px images, a few steps.
    "tiny": dict(ar="tiny", decoder="tiny", vae="tiny", reference_image_px=None, dtype="float32",
                 sampling=dict(num_steps=4, guidance_scale=1.0, edit_guidance_scale=1.0, shift=3.0,
                               height=64, width=64, negative="none")),
    # The bundled ShapesWorld model (its part presets): 64-px images, 128-px editing references (8x8
    # tokens, as prepare-embeds). "null" negative branch = decoders trained with conditioning dropout.
    # The sampling values are the bundled model's, chosen by `nexusgen eval shapes` sweeps: 6 Euler steps
    # lose generation nothing, editing needs 10; guidance 2 on the editing decoder's target took editing
    # from 0.715 to 0.805, and generation needs none (tests/train/test_shapes_mini_recipe.py keeps them equal).
    "shapes-mini": dict(ar="shapes-mini", decoder="shapes-mini", vae="shapes-mini", reference_image_px=(128, 128),
                        dtype="float32",
                        sampling=dict(num_steps=6, edit_num_steps=10, guidance_scale=1.0, edit_guidance_scale=2.0,
                                      shift=3.0, height=64, width=64, negative="null")),
    # The official model (docs/upstream.md §1.3, §4.2): 81 output tokens, 504-px editing reference, T5 negative branch.
    "nexus-gen-v2": dict(ar="nexus-gen-v2", decoder="nexus-gen-v2", vae="nexus-gen-v2",
                         reference_image_px=(504, 504), dtype="bfloat16",
                         sampling=dict(num_steps=50, guidance_scale=3.0, edit_guidance_scale=1.0, shift=3.0,
                                       height=512, width=512, negative="t5")),
}
