"""Inference pipelines: understand, generate, edit, chat. Inference only (no training code here).

Each pipeline receives built components (`nexusgen.loading.folder.ModelParts` holds them), has one
`__call__` under `torch.inference_mode()` with keyword-only arguments named alike in every pipeline
(`prompt`, `image`, `height`, `width`, `num_steps`, `guidance_scale`, `seed`, `max_new_tokens`), runs
its steps in a fixed order (validate -> encode -> AR -> denoise -> decode) and returns a small output
dataclass of lists. `nexusgen.api.NexusGen` wires them together; `nexusgen.commands` holds the CLI handlers.
"""

from nexusgen.pipelines.chat import ChatOutput, ChatPipeline, ChatReply
from nexusgen.pipelines.edit import EditOutput, EditPipeline
from nexusgen.pipelines.generate import GenerateOutput, GeneratePipeline
from nexusgen.pipelines.runtime import Runtime
from nexusgen.pipelines.understand import UnderstandOutput, UnderstandPipeline

__all__ = [
    "ChatOutput", "ChatPipeline", "ChatReply", "EditOutput", "EditPipeline", "GenerateOutput",
    "GeneratePipeline", "Runtime", "UnderstandOutput", "UnderstandPipeline",
]
