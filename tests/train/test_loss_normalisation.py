"""Every loss is a mean over the global batch: the shares of any split of a batch (ranks, accumulation
micro-steps) add up to the loss of the whole batch, terms and gradients, whatever the answer lengths."""

import torch
from PIL import Image

from nexusgen.data.collate import collate_ar
from nexusgen.flow.loss import drop_condition, flow_matching_loss
from nexusgen.loading.autoregressive import build_autoregressive
from nexusgen.train.stages.ar import ARTrainModule
from nexusgen.train.stages.common import LOSS_TOTALS, sample_generators


def _samples():
    """Understanding answers of very different lengths, and generation / editing targets."""
    red, blue = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 48), (20, 20, 220))
    long_answer = "a large red square in the middle, a small blue disc at the top left and nothing else at all"
    return [
        {"messages": [{"role": "user", "content": "<image>\nColour?"},
                      {"role": "assistant", "content": "Red."}], "images": [red]},
        {"messages": [{"role": "user", "content": "Generate an image according to the following description: x"},
                      {"role": "assistant", "content": "Here is an image based on the description: <image>"}],
         "images": [blue]},
        {"messages": [{"role": "user", "content": "<image>\nDescribe it."},
                      {"role": "assistant", "content": long_answer}], "images": [blue]},
        {"messages": [{"role": "user", "content": "<image> Make it blue."},
                      {"role": "assistant", "content": "Here is the image: <image>"}], "images": [red, blue]},
    ]


def _split_shares(module, batches):
    """Sum of each part's share of the global loss (and of its gradient), as ranks and micro-steps add them."""
    totals: dict[str, int] = {}
    for batch in batches:
        for unit, value in module.loss_units(batch).items():
            totals[unit] = totals.get(unit, 0) + value
    module.zero_grad()
    terms: dict[str, float] = {}
    for batch in batches:
        out = module({**batch, LOSS_TOTALS: totals})
        out["loss"].backward()
        for name, value in out.items():
            terms[name] = terms.get(name, 0.0) + float(value.detach())
    return terms, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _ar_module(ce_reduction="token"):
    model, tokenizer, image_processor = build_autoregressive("tiny", seed=0)
    module = ARTrainModule(model.train(), {"token": 0.7, "image": 1.3}, ce_reduction=ce_reduction)
    return module, lambda samples: collate_ar(samples, tokenizer, image_processor, model.config)


def test_ar_shares_of_a_split_batch_add_up_to_the_whole_batch():
    for reduction in ("token", "sample"):
        module, collate = _ar_module(reduction)
        samples = _samples()
        whole, whole_grads = _split_shares(module, [collate(samples)])
        # an uneven split: one rank holds the one-word answer, the other the long one
        parts, part_grads = _split_shares(module, [collate(samples[:2]), collate(samples[2:])])
        for name in ("loss", "ce", "image_loss", "image_mse", "image_cos"):
            assert abs(parts[name] - whole[name]) <= 1e-6 * abs(whole[name]), (reduction, name)
        for name, grad in whole_grads.items():
            torch.testing.assert_close(part_grads[name], grad, rtol=1e-5, atol=1e-7)
        if reduction == "token":  # what the loss was before: the mean of the parts' own means, another number
            with torch.no_grad():
                means = [module(collate(half))["ce"] for half in (samples[:2], samples[2:])]
            assert abs(float(sum(means)) / 2 - whole["ce"]) > 1e-4 * whole["ce"]


def test_flow_loss_per_sample_generators_do_not_depend_on_the_split():
    x_0 = torch.randn(6, 4, 2, 2)
    weights = torch.nn.Parameter(torch.tensor(0.5))

    def velocity(x_t, t):
        return weights * x_t + t.view(-1, 1, 1, 1)

    whole = flow_matching_loss(velocity, x_0, generator=sample_generators(range(10, 16), seed=3))
    halves = [flow_matching_loss(velocity, x_0[i:i + 3], generator=sample_generators(range(10 + i, 13 + i), seed=3))
              for i in (0, 3)]
    torch.testing.assert_close(torch.cat([h["sample_loss"] for h in halves]), whole["sample_loss"])
    torch.testing.assert_close(torch.cat([h["t"] for h in halves]), whole["t"])
    assert len(set(whole["t"].tolist())) > 1  # one t per sample
    embeds = torch.ones(6, 3, 2)
    dropped = drop_condition(embeds, 0.5, sample_generators(range(10, 16), seed=3))
    halves = [drop_condition(embeds[i:i + 3], 0.5, sample_generators(range(10 + i, 13 + i), seed=3)) for i in (0, 3)]
    assert torch.equal(torch.cat(halves), dropped)


def test_decoder_shares_of_a_split_batch_add_up_to_the_whole_batch():
    from nexusgen.models.decoder import DECODER_PRESETS, GenerationDecoder
    from nexusgen.models.vae import VAE_PRESETS, build_vae
    from nexusgen.train.stages.common import samples_units
    from nexusgen.train.stages.generation_decoder import DecoderTrainModule

    torch.manual_seed(0)
    config = DECODER_PRESETS["tiny"]
    module = DecoderTrainModule(GenerationDecoder(config), build_vae(VAE_PRESETS["tiny"]), None, seed=5,
                                loss_weight=2.0, cond_dropout_prob=0.3)
    module.loss_units = samples_units
    batch = {"target_pixels": torch.rand(4, 3, 32, 32), "position": torch.arange(20, 24),
             "target_embeds": torch.randn(4, 16, config.embed_dim)}
    whole, whole_grads = _split_shares(module, [batch])
    parts, part_grads = _split_shares(module, [{k: v[:1] for k, v in batch.items()},
                                               {k: v[1:] for k, v in batch.items()}])
    for name in ("loss", "flow", "mse"):
        assert abs(parts[name] - whole[name]) <= 1e-6 * abs(whole[name]), name
    for name, grad in whole_grads.items():
        torch.testing.assert_close(part_grads[name], grad, rtol=1e-5, atol=1e-7)
