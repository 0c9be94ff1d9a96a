"""CMPF (seed Sec. 3.3, Eq. 4-7) and the colour vocabulary."""
from __future__ import annotations

import pytest
import torch

from lc4.cmpf import COLOR_NAMES, CrossModalityPreFusion, color_token_mask, without_color_words

from model_helpers import randomize_


def tokenize(tokenizer, prompts):
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def masked_words(tokenizer, prompt):
    ids = tokenize(tokenizer, [prompt])
    mask = color_token_mask(tokenizer, ids)[0]
    return [tokenizer.convert_ids_to_tokens(i).replace("</w>", "") for i, m in zip(ids[0].tolist(), mask) if m]


def test_colour_words_are_found_with_the_real_tokenizer(components):
    tokenizer = components["tokenizer"]
    assert len(tokenizer) == components["text_encoder"].config.vocab_size > 500
    assert masked_words(tokenizer, "a man in a red shirt riding a bike") == ["red"]
    assert masked_words(tokenizer, "a light blue car and a navy hat") == ["light", "blue", "navy"]
    # A colour name of two words: both are masked, nothing else.
    assert "".join(masked_words(tokenizer, "a Dark Green tree under a sky")) == "darkgreen"
    assert masked_words(tokenizer, "a dark road with a man") == []  # a shade word alone is no colour
    assert "".join(masked_words(tokenizer, "turquoise water, golden hair")) == "turquoisegolden"
    assert "light blue" in COLOR_NAMES and "gray" in COLOR_NAMES and "grey" in COLOR_NAMES


def test_colour_words_split_into_several_tokens_are_masked_whole(components):
    tokenizer = components["tokenizer"]
    ids = tokenize(tokenizer, ["a zorblat car"])
    assert len(tokenizer("zorblat", add_special_tokens=False).input_ids) > 1
    mask = color_token_mask(tokenizer, ids, color_names=["zorblat"])[0]
    zorblat = tokenizer("zorblat", add_special_tokens=False).input_ids
    assert mask.sum() == len(zorblat)
    start = ids[0].tolist().index(zorblat[0])
    assert mask[start:start + len(zorblat)].all()


def test_fresh_cmpf_returns_the_clip_embeddings_exactly(components):
    cmpf = components["cmpf"]
    text = torch.randn(2, 77, 32)
    lum = torch.randn(4, 8, 16, 16)
    assert torch.equal(cmpf(text, lum, num_frames=4), text)
    randomize_(cmpf)
    assert not torch.allclose(cmpf(text, lum, num_frames=4), text)


def test_colour_tokens_take_no_visual_context(components):
    """With one fusion block, a colour token's output depends on the text only (MCA is masked
    for it; MSA and FFN see the text); a noun's output depends on the luminance features."""
    tokenizer = components["tokenizer"]
    cmpf = randomize_(CrossModalityPreFusion(text_dim=32, num_layers=1, num_heads=4, luminance_channels=8,
                                             spatial_stride=2, temporal_stride=2))
    ids = tokenize(tokenizer, ["a red car"])
    mask = color_token_mask(tokenizer, ids)
    text = torch.randn(1, ids.shape[1], 32)
    lum_a, lum_b = torch.randn(4, 8, 16, 16), torch.randn(4, 8, 16, 16)
    with torch.no_grad():
        out_a = cmpf(text, lum_a, 4, mask)
        out_b = cmpf(text, lum_b, 4, mask)
    red = mask[0].nonzero().item()
    assert torch.allclose(out_a[0, red], out_b[0, red], atol=1e-6)
    assert not torch.allclose(out_a[0, red + 1], out_b[0, red + 1], atol=1e-3)  # "car"


def test_cmpf_checks_its_inputs(components):
    cmpf = components["cmpf"]
    with pytest.raises(ValueError, match=r"text_embeds: expected \(B, Nt, 32\)"):
        cmpf(torch.randn(1, 77, 16), torch.randn(4, 8, 16, 16), 4)
    with pytest.raises(ValueError, match=r"luminance_features: expected \(B\*4, 8, h, w\)"):
        cmpf(torch.randn(1, 77, 32), torch.randn(4, 3, 16, 16), 4)
    with pytest.raises(ValueError, match="color_mask"):
        cmpf(torch.randn(1, 77, 32), torch.randn(4, 8, 16, 16), 4, torch.zeros(1, 5, dtype=torch.bool))


def test_colour_mask_matches_a_word_by_word_search(components):
    """The vectorised matcher against a plain search over every position and every name, on
    captions that mix one-, two- and several-token colour names with other words."""
    tokenizer = components["tokenizer"]
    generator = torch.Generator().manual_seed(0)
    words = ["a", "car", "dark", "sky", "light", "red", "tree", "on", "blue", "navy", "zorblat", "hot", "pink"]
    names = list(COLOR_NAMES) + ["zorblat"]
    prompts = [" ".join(words[i] for i in torch.randint(len(words), (12,), generator=generator)) for _ in range(16)]
    ids = tokenize(tokenizer, prompts)
    expected = torch.zeros_like(ids, dtype=torch.bool)
    for name in names:
        pattern = tokenizer(name, add_special_tokens=False).input_ids
        for row, sequence in enumerate(ids.tolist()):
            for start in range(len(sequence) - len(pattern) + 1):
                if sequence[start:start + len(pattern)] == pattern:
                    expected[row, start:start + len(pattern)] = True
    assert expected.any(dim=1).all() and not expected.all()
    assert torch.equal(color_token_mask(tokenizer, ids, color_names=names), expected)
    assert torch.equal(color_token_mask(tokenizer, ids, color_names=names), expected)  # from the cache


@pytest.mark.parametrize("text, expected", [
    ("a red car on a dark blue road", "a car on a road"),
    ("A Red circle, a lime star and a teal square on a gray background", "A circle, a star and a square on a background"),
    ("a light-red ball in a blue-green sea", "a ball in a sea"),
    ("an off  white cat in a redwood forest", "an cat in a redwood forest"),  # words only, not "red" in "redwood"
    ("a well-known man", "a well-known man"),
])
def test_colour_words_are_taken_out_of_a_text(text, expected):
    assert without_color_words(text) == expected


def test_toy_captions_without_colour_words_are_the_generators_own():
    import numpy as np

    from lc4.toy.generator import caption_for, sample_spec

    for seed in range(200):
        spec = sample_spec(np.random.default_rng(seed), split="train" if seed % 2 else "heldout")
        assert without_color_words(caption_for(spec)) == caption_for(spec, with_colors=False)
