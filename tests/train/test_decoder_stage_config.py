"""stage.model on the decoder stages: typed settings that leave the weights alone, so they apply to a fresh
decoder and to the parent's loaded one alike; anything else is refused before training."""

import pytest

from nexusgen.loading.decoders import load_generation_decoder
from nexusgen.recipes import get_recipe
from nexusgen.train.config import apply_overrides
from nexusgen.train.loop import train
from nexusgen.train.stages.parts import build_decoder


def test_generation_context_ids_are_trained_saved_and_switchable_on_a_parent(tmp_path):
    grid = ["stage.model.generation_context_ids=grid"]
    train(apply_overrides(get_recipe("tiny-generation_decoder"), ["max_steps=2", "save_every=0", "progress=false",
                                                                  "stage.parent=null", *grid]), tmp_path / "gen")
    folder = tmp_path / "gen/final"
    assert load_generation_decoder(folder / "generation_decoder").config.generation_context_ids == "grid"

    def from_parent(*overrides):
        config = apply_overrides(get_recipe("tiny-generation_decoder"), [f"stage.parent={folder}", *overrides])
        return build_decoder(config, "generation")

    assert from_parent('stage.model={"generation_context_ids": "zero"}').config.generation_context_ids == "zero"
    assert from_parent().config.generation_context_ids == "grid"  # None keeps the parent's own
    assert from_parent("stage.model.embedded_guidance=2.5").config.embedded_guidance == 2.5
    with pytest.raises(ValueError, match="no field 'num_layers'"):
        from_parent("stage.model.num_layers=3")  # the size comes from the preset, never from stage.model
    with pytest.raises(ValueError, match="generation_context_ids"):
        from_parent('stage.model={"generation_context_ids": "diagonal"}')
    with pytest.raises(ValueError, match="is for stage.s. generation_decoder, not 'editing_decoder'"):
        apply_overrides(get_recipe("tiny-editing_decoder"), ["stage.model.generation_context_ids=grid"])
