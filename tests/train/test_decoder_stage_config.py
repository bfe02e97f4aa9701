"""stage.model on the decoder stages: fresh decoders take any DecoderConfig field; a parent's loaded
decoder only those that leave its weights alone."""

import pytest

from nexusgen.loading.decoders import load_generation_decoder
from nexusgen.recipes import get_recipe
from nexusgen.train.config import apply_overrides
from nexusgen.train.loop import train
from nexusgen.train.stages.parts import build_decoder


def test_generation_context_ids_are_trained_saved_and_switchable_on_a_parent(tmp_path):
    grid = ['stage.model={"generation_context_ids": "grid"}']
    train(apply_overrides(get_recipe("tiny-gen_decoder"), ["max_steps=2", "save_every=0", "progress=false",
                                                           "stage.parent=null", *grid]), tmp_path / "gen")
    folder = tmp_path / "gen/final"
    assert load_generation_decoder(folder / "generation_decoder").config.generation_context_ids == "grid"

    def from_parent(model_json):
        config = apply_overrides(get_recipe("tiny-gen_decoder"), [f"stage.parent={folder}",
                                                                  f"stage.model={model_json}"])
        return build_decoder(config, "generation")

    assert from_parent('{"generation_context_ids": "zero"}').config.generation_context_ids == "zero"
    assert from_parent("{}").config.generation_context_ids == "grid"
    with pytest.raises(ValueError, match="would change the weights"):
        from_parent('{"num_layers": 3}')
    with pytest.raises(ValueError, match="generation_context_ids"):
        from_parent('{"generation_context_ids": "diagonal"}')
