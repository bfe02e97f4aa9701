"""Presets of the autoregressive model (`ARConfig.from_preset`): Qwen2.5-VL configs + Nexus-Gen fields.

Re-exported by `nexusgen.models.autoregressive` (`AR_PRESETS`), where they always lived.
"""

from __future__ import annotations


def _rope(theta: float, section: list[int]) -> dict:
    return {"rope_type": "default", "rope_theta": theta, "mrope_section": section}


# Token ids of the byte-level test tokenizer (processing.tokenizers.build_byte_tokenizer): bytes 0..255,
# then the 14 Qwen2.5-VL special tokens from 256.
_BYTE_TOKENIZER_IDS = dict(image_token_id=268, video_token_id=269, vision_start_token_id=265,
                           vision_end_token_id=266)
# The miniature model's BPE (processing.tokenizers "shapes-bpe"): 1024 learned tokens, specials from 1024.
_SHAPES_BPE_IDS = dict(image_token_id=1036, video_token_id=1037, vision_start_token_id=1033,
                       vision_end_token_id=1034)
_QWEN_TOKENIZER_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                           vision_end_token_id=151653)

AR_PRESETS: dict[str, dict] = {
    # CPU tests in seconds: 16-px tokens (patch 8, merge 2), 64x64 outputs -> 4x4 = 16 output tokens.
    "tiny": dict(
        qwen=dict(
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=8, spatial_merge_size=2, temporal_patch_size=2, window_size=32,
                               fullatt_block_indexes=[1]),
            text_config=dict(vocab_size=272, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                             rms_norm_eps=1e-6, rope_parameters=_rope(1e6, [2, 3, 3]),
                             bos_token_id=256, eos_token_id=258),
            tie_word_embeddings=False, **_BYTE_TOKENIZER_IDS),
        num_output_tokens=16, output_image_px=(64, 64), max_input_pixels=128 * 128, min_input_pixels=32 * 32),
    # The bundled miniature model (ShapesWorld, trained from scratch on a CPU): 64-px images, 16-px tokens
    # -> 4x4 = 16 output tokens; 128-px editing references -> 8x8 tokens. About 3.5 M parameters.
    "shapes-mini": dict(
        qwen=dict(
            vision_config=dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4,
                               out_hidden_size=256, patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
                               window_size=32, fullatt_block_indexes=[1, 3]),
            text_config=dict(vocab_size=1040, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                             rms_norm_eps=1e-6, rope_parameters=_rope(1e6, [8, 12, 12]),
                             bos_token_id=1024, eos_token_id=1026),
            tie_word_embeddings=False, **_SHAPES_BPE_IDS),
        num_output_tokens=16, output_image_px=(64, 64), max_input_pixels=128 * 128, min_input_pixels=32 * 32,
        tokenizer="shapes-bpe"),
    # Benchmarks: about 4.6 M parameters with the real token geometry (28-px tokens, 252 px -> N = 81).
    "mid": dict(
        qwen=dict(
            vision_config=dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4,
                               out_hidden_size=256, patch_size=14, spatial_merge_size=2,
                               temporal_patch_size=2, window_size=112, fullatt_block_indexes=[3]),
            text_config=dict(vocab_size=272, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                             rms_norm_eps=1e-6, rope_parameters=_rope(1e6, [8, 12, 12]),
                             bos_token_id=256, eos_token_id=258),
            tie_word_embeddings=False, **_BYTE_TOKENIZER_IDS),
        num_output_tokens=81, output_image_px=(252, 252)),
    # `mid` with the real Qwen2.5 vocabulary and token ids (tokenizer "qwen2.5"): prompts as long as the real
    # model's (~45 tokens for a canonical generation prompt, vs ~190 bytes). Benchmarks; ~82 M parameters,
    # 78 M of them in the (cheap to read) embedding table and lm_head.
    "mid-qwen": dict(
        qwen=dict(
            vision_config=dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4,
                               out_hidden_size=256, patch_size=14, spatial_merge_size=2,
                               temporal_patch_size=2, window_size=112, fullatt_block_indexes=[3]),
            text_config=dict(vocab_size=152064, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                             rms_norm_eps=1e-6, rope_parameters=_rope(1e6, [8, 12, 12]),
                             bos_token_id=151643, eos_token_id=151645),
            tie_word_embeddings=False, **_QWEN_TOKENIZER_IDS),
        num_output_tokens=81, output_image_px=(252, 252), tokenizer="qwen2.5"),
    # The real Nexus-GenV2 dimensions (Qwen2.5-VL-7B, 8.3 B parameters). Never build it on a CPU test
    # machine except on the meta device.
    "nexus-gen-v2": dict(
        qwen=dict(
            vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                               out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                               temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                               tokens_per_second=2),
            text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                             num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                             max_position_embeddings=128000,
                             rms_norm_eps=1e-6, rope_parameters=_rope(1e6, [16, 24, 24]),
                             bos_token_id=151643, eos_token_id=151645),
            tie_word_embeddings=False, **_QWEN_TOKENIZER_IDS),
        num_output_tokens=81, output_image_px=(252, 252)),
}
