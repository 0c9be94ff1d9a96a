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


def test_fusion_block_equals_equations_4_to_6_written_out():
    """Eq. 4: LN(MSA(y) + y); Eq. 5: LN(M * MCA(y, y_lum) + y), the colour tokens' MCA zeroed;
    Eq. 6: LN(FFN(y) + y)."""
    from lc4.cmpf import FusionBlock

    torch.manual_seed(0)
    block = FusionBlock(dim=32, num_heads=4).double().eval()
    with torch.no_grad():  # non-trivial layer norms
        for norm in (block.norm1, block.norm2, block.norm3):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.1)
    text, visual = torch.randn(2, 9, 32, dtype=torch.float64), torch.randn(2, 12, 32, dtype=torch.float64)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 2], mask[1, 5:7] = True, True
    with torch.no_grad():
        y = block.norm1(block.self_attn(text, text, text)[0] + text)
        context = block.cross_attn(y, visual, visual)[0] * (~mask[..., None]).double()
        y = block.norm2(context + y)
        expected = block.norm3(block.ffn(y) + y)
        assert torch.allclose(block(text, visual, mask), expected, atol=1e-12)
        assert not torch.allclose(block(text, visual, None), expected, atol=1e-6)  # the mask matters


def test_visual_prompt_is_the_tda_compression_of_the_luminance_features():
    """``y_lum`` ``(B*F, C, h, w)`` -> clips ``(B, F, h, w, C)`` (channels last, rows of h) -> W
    to the text width -> TDA compression; checked on a non-square feature map."""
    cmpf = randomize_(CrossModalityPreFusion(text_dim=32, num_layers=1, num_heads=4, luminance_channels=8,
                                             spatial_stride=2, temporal_stride=2)).double()
    videos, frames, h, w = 2, 4, 6, 10
    lum = torch.randn(videos * frames, 8, h, w, dtype=torch.float64)
    clips = lum.view(videos, frames, 8, h, w).permute(0, 1, 3, 4, 2)
    with torch.no_grad():
        expected = cmpf.visual_tda.compress(cmpf.visual_in(clips))
        assert torch.allclose(cmpf.visual_prompt(lum, frames), expected, atol=1e-12)


def test_each_prompt_attends_to_its_own_video(components):
    """Prompts with a video each (``B_v = B``): the n-th output is the call for prompt n and video
    n alone, and another video changes it."""
    tokenizer = components["tokenizer"]
    cmpf = randomize_(components["cmpf"])
    ids = tokenize(tokenizer, ["a red car", "a blue sky"])
    mask = color_token_mask(tokenizer, ids)
    text = torch.randn(2, ids.shape[1], 32)
    lum = torch.randn(2 * 4, 8, 16, 16)
    with torch.no_grad():
        batch = cmpf(text, lum, 4, mask)
        for n in range(2):
            alone = cmpf(text[n:n + 1], lum[4 * n:4 * n + 4], 4, mask[n:n + 1])
            assert torch.allclose(batch[n], alone[0], atol=1e-5)
        swapped = cmpf(text, torch.cat([lum[4:], lum[:4]]), 4, mask)
    assert not torch.allclose(swapped, batch, atol=1e-4)


def test_cmpf_in_float64_takes_float32_inputs(components):
    """Inputs are cast to the module's dtype; the output keeps the text embeddings' dtype."""
    cmpf = randomize_(components["cmpf"]).double()
    text, lum = torch.randn(2, 77, 32), torch.randn(4, 8, 16, 16)
    mask = torch.zeros(2, 77, dtype=torch.bool)
    mask[:, 3] = True
    with torch.no_grad():
        out = cmpf(text, lum, 4, mask)
        expected = cmpf(text.double(), lum.double(), 4, mask)
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected.float(), atol=1e-5)
