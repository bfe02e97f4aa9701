"""Learn the miniature model's BPE from ShapesWorld text; store it as nexusgen/assets/tokenizers/shapes-bpe.json.

Run once (deterministic): `python scripts/make_shapes_tokenizer.py`. The corpus is every string a
ShapesWorld training sample puts in a conversation (EN and ZH, all prompt styles and tasks) plus the
chat template's fixed text, so no word the model meets is split into bytes.
"""

import json
from pathlib import Path

from nexusgen.processing.templates import DEFAULT_SYSTEM_PROMPT
from nexusgen.processing.tokenizers import learn_bpe
from nexusgen.worlds.shapes.dataset import SampleConfig, make_sample

VOCAB_SIZE = 1024
NUM_SAMPLES = 20_000
OUT = Path(__file__).resolve().parents[1] / "nexusgen" / "assets" / "tokenizers" / "shapes-bpe.json"


def corpus():
    yield from [DEFAULT_SYSTEM_PROMPT, "system", "user", "assistant"] * 50
    for split in ("train", "test"):
        config = SampleConfig(split=split, prompt_style="mixed", zh_fraction=0.3)
        for index in range(NUM_SAMPLES // 2):
            for message in make_sample(index, seed=12345, config=config).messages:
                yield message["content"]


def main():
    vocab, merges = learn_bpe(corpus(), VOCAB_SIZE)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"vocab": vocab, "merges": merges}, ensure_ascii=False), encoding="utf-8")
    print(f"{OUT}: {len(vocab)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main()
