"""The cross-attentions' routing loss: class words, targets, the recorded attention against
diffusers' own, the loss against its formula, the config's checks, and a training run that
learns the routing and leaves the plain model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lc4.train import load_config, train
from lc4.train.data import TextVideoDataset, collate, list_videos
from lc4.train.grounding import IGNORE, CrossAttentionGrounding, class_positions, class_word_ids, routing_targets
from lc4.train.models import LC4Denoiser, diffusion_loss, load_components, tokenize_captions
from lc4.train.segmentation import cross_attentions
from train_helpers import labelled_source, tiny_config_values

# labelled_source's classes are coloured dark, red and blue.
CLASS_WORDS = ["dark", "red", "blue"]


def test_class_words_must_be_single_distinct_tokens(tiny_model_dir):
    tokenizer = load_components(tiny_model_dir).tokenizer
    ids = class_word_ids(tokenizer, CLASS_WORDS)
    assert ids == [tokenizer(w, add_special_tokens=False).input_ids[0] for w in CLASS_WORDS] and len(set(ids)) == 3
    with pytest.raises(ValueError, match=r"grounding.class_words\[1\]: 'zebracorn' is \d+ tokens"):
        class_word_ids(tokenizer, ["dark", "zebracorn"])
    with pytest.raises(ValueError, match="distinct"):
        class_word_ids(tokenizer, ["red", "red"])


def test_class_positions_are_first_occurrences_or_minus_one():
    token_ids = torch.tensor([[0, 7, 5, 9, 5, 1],
                              [0, 9, 1, 1, 1, 1]])
    assert class_positions(token_ids, [5, 9, 4]).tolist() == [[2, 3, -1], [-1, 1, -1]]


def test_routing_targets_skip_mixed_cells_unnamed_classes_and_frames_without_a_choice():
    labels = torch.tensor([[[0, 0, 1, 1],
                            [0, 0, 1, 1],
                            [2, 2, 1, 0],
                            [2, 2, 0, 1]]]).repeat(3, 1, 1)
    positions = torch.tensor([[1, 2, 3],     # every class named
                              [1, -1, 3],    # class 1 not named: its cells are skipped
                              [-1, 2, -1]])  # one class named: nothing to choose between
    targets = routing_targets(labels, positions, side=2)
    assert targets.tolist() == [[0, 1, 2, IGNORE], [0, IGNORE, 2, IGNORE], [IGNORE] * 4]


def record_inputs(unet):
    """Pre-hooks keeping each cross-attention's (hidden, context) of the next call."""
    seen = {}

    def keep(key, module, args, kwargs):
        seen[key] = (args[0], kwargs["encoder_hidden_states"])

    hooks = [m.register_forward_pre_hook(lambda mod, a, k, key=key: keep(key, mod, a, k), with_kwargs=True)
             for key, m in cross_attentions(unet).items()]
    return seen, hooks


def run_denoiser(components, frames=2, side=32, text=None):
    denoiser = LC4Denoiser(components.unet, components.luminance_encoder)
    luminance = torch.rand(frames, 1, side, side) * 2 - 1
    with torch.no_grad():
        latents = torch.randn(components.luminance_encoder(luminance, return_skips=False).latent_residual.shape)
    if text is None:
        text = torch.randn(1, 77, components.unet.config.cross_attention_dim)
    denoiser(latents, torch.tensor([500] * frames), text, luminance, frames)


def test_recorded_attention_is_diffusers_attention_averaged_over_heads(tiny_model_dir):
    components = load_components(tiny_model_dir)
    unet = components.unet.train()
    grounding = CrossAttentionGrounding(unet, [1, 2])
    seen, hooks = record_inputs(unet)
    run_denoiser(components)
    assert set(grounding.probs) == set(seen) and seen
    for key, module in cross_attentions(unet).items():
        hidden, context = seen[key]
        query = module.head_to_batch_dim(module.to_q(hidden))
        keys = module.head_to_batch_dim(module.to_k(context))
        expected = module.get_attention_scores(query, keys).unflatten(0, (hidden.shape[0], module.heads)).mean(1)
        torch.testing.assert_close(grounding.probs[key], expected, rtol=1e-5, atol=1e-6)
    for hook in hooks:
        hook.remove()
    grounding.probs = {}
    unet.eval()  # not in training: nothing recorded
    run_denoiser(components)
    assert grounding.probs == {}
    with pytest.raises(RuntimeError, match="no attention recorded"):
        grounding.loss(torch.zeros(2, 32, 32, dtype=torch.long), torch.zeros(2, 77, dtype=torch.long))
    unet.train()
    grounding.detach_hooks()
    run_denoiser(components)
    assert grounding.probs == {}


def test_loss_is_the_class_balanced_routing_cross_entropy(tiny_model_dir):
    """The loss against a direct evaluation of its formula on made-up attention."""
    unet = load_components(tiny_model_dir).unet
    grounding = CrossAttentionGrounding(unet, [11, 12, 13])
    generator = torch.Generator().manual_seed(0)
    frames, tokens, side = 3, 6, 4
    token_ids = torch.tensor([[0, 11, 12, 13, 1, 1],   # classes 0, 1, 2 at positions 1, 2, 3
                              [0, 13, 11, 1, 1, 1],    # class 1 not named
                              [0, 12, 1, 1, 1, 1]])    # one class named: skipped
    # 2x2 blocks of one class (pure cells at side 2), a few pixels changed (mixed cells there)
    labels = torch.randint(0, 3, (frames, side // 2, side // 2), generator=generator)
    labels = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    labels[:, 0, 0] = (labels[:, 0, 0] + 1) % 3
    probs = {"a": torch.rand(frames, side * side, tokens, generator=generator).softmax(-1),
             "b": torch.rand(frames, (side // 2) ** 2, tokens, generator=generator).softmax(-1)}
    grounding.probs = dict(probs)
    loss = grounding.loss(labels, token_ids)

    named = {0: {0: 1, 1: 2, 2: 3}, 1: {0: 2, 2: 1}, 2: {1: 1}}  # frame -> class -> position
    layer_losses = []
    for key, p in probs.items():
        s = round(p.shape[1] ** 0.5)
        cell = side // s
        groups = {}
        for n in range(frames):
            if len(named[n]) < 2:
                continue
            for i in range(s * s):
                r, c = divmod(i, s)
                block = labels[n, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].flatten()
                counts = torch.bincount(block, minlength=3).float() / block.numel()
                cls = int(counts.argmax())
                if counts[cls] <= 0.75 or cls not in named[n]:
                    continue
                mass = sum(p[n, i, pos].item() for pos in named[n].values())
                groups.setdefault((n, cls), []).append(-math.log(p[n, i, named[n][cls]].item() / mass))
        layer_losses.append(np.mean([np.mean(v) for v in groups.values()]))
    assert loss.item() == pytest.approx(np.mean(layer_losses), rel=1e-5)
    assert grounding.probs == {}
    grounding.probs = {"a": probs["a"]}
    with pytest.raises(ValueError, match="one per frame"):
        grounding.loss(labels[:2], token_ids[:2].repeat(2, 1)[:3])
    with pytest.raises(ValueError, match="layer x has 15 pixels"):
        grounding.probs = {"x": torch.rand(frames, 15, tokens)}
        grounding.loss(labels, token_ids)


def test_config_checks_the_grounding_settings(tiny_model_dir, tmp_path):
    def config(**overrides):
        return load_config(values=tiny_config_values(tiny_model_dir, tmp_path, tmp_path / "run", **overrides))

    assert config().grounding.weight == 0 and not config().uses_label_maps
    assert config(grounding__weight=1.0, grounding__class_words=CLASS_WORDS).uses_label_maps
    with pytest.raises(ValueError, match="grounding.class_words: expected at least 2"):
        config(grounding__weight=1.0, grounding__class_words=["red"])
    with pytest.raises(ValueError, match="grounding.weight: expected >= 0"):
        config(grounding__weight=-1.0, grounding__class_words=CLASS_WORDS)
    with pytest.raises(ValueError, match="trainable must include unet"):
        config(stage=2, grounding__weight=1.0, grounding__class_words=CLASS_WORDS)


def test_grounding_without_labels_in_the_data_is_refused(tiny_model_dir, video_folder, tmp_path):
    values = tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", grounding__weight=1.0,
                                grounding__class_words=CLASS_WORDS)
    with pytest.raises(ValueError, match="segmentation folder"):
        train(load_config(values=values))


def grounding_loss_on(components, batch, word_ids) -> torch.Tensor:
    """The routing loss of a model on fixed clips at a fixed noise draw, with its graph (the
    hooks stay on the UNet: under gradient checkpointing the backward reruns them)."""
    grounding = CrossAttentionGrounding(components.unet, word_ids)
    denoiser = LC4Denoiser(components.unet, components.luminance_encoder, text_encoder=components.text_encoder).train()
    labels = batch["segmentation"].flatten(0, 1)
    token_ids = tokenize_captions(components.tokenizer, batch["captions"], "cpu")[0]
    diffusion_loss(denoiser, components, batch, generator=torch.Generator().manual_seed(0),
                   timesteps=torch.full((len(batch["captions"]),), 500), train_text_encoder=True)
    return grounding.loss(labels, token_ids.repeat_interleave(batch["segmentation"].shape[1], 0))


CAPTIONS = ["red and blue on dark", "blue and red on dark", "dark with red and blue"]


def test_a_small_step_down_the_gradient_lowers_the_loss(tiny_model_dir, tmp_path):
    """The loss's gradient reaches the UNet and the text encoder and points downhill."""
    source = labelled_source(tmp_path / "data", count=3, num_frames=8, captions=CAPTIONS)
    batch = collate([TextVideoDataset(list_videos(source), 32, 4, segmentation=True)[(i, 0)] for i in range(3)])
    components = load_components(tiny_model_dir)
    word_ids = class_word_ids(components.tokenizer, CLASS_WORDS)
    loss = grounding_loss_on(components, batch, word_ids)
    loss.backward()
    params = [p for m in (components.unet, components.text_encoder) for p in m.parameters() if p.grad is not None]
    assert any(p.grad.abs().sum() > 0 for p in components.text_encoder.parameters() if p.grad is not None)
    assert components.unet.conv_in.weight.grad.abs().sum() > 0  # through the queries, below the attention
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    with torch.no_grad():
        for p in params:
            p -= 0.05 * p.grad / norm
    assert grounding_loss_on(components, batch, word_ids).item() < loss.item() - 1e-4


def test_the_gradient_is_the_same_under_gradient_checkpointing(tiny_model_dir, tmp_path):
    source = labelled_source(tmp_path / "data", count=3, num_frames=8, captions=CAPTIONS)
    batch = collate([TextVideoDataset(list_videos(source), 32, 4, segmentation=True)[(i, 0)] for i in range(3)])
    grads = []
    for checkpointing in (False, True):
        components = load_components(tiny_model_dir)
        if checkpointing:
            components.unet.enable_gradient_checkpointing()
        grounding_loss_on(components, batch, class_word_ids(components.tokenizer, CLASS_WORDS)).backward()
        grads.append(components.unet.conv_in.weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_training_with_grounding_records_it_and_saves_the_plain_model(tiny_model_dir, tmp_path):
    source = labelled_source(tmp_path / "data", count=3, num_frames=8, captions=CAPTIONS)

    def run(name, weight):
        values = tiny_config_values(tiny_model_dir, source, tmp_path / name, max_steps=6, data__num_frames=4,
                                    data__caption_dropout=0.0, batch_size=2, trainable=["unet", "tda", "text_encoder"],
                                    grounding__weight=weight, grounding__class_words=CLASS_WORDS,
                                    gradient_checkpointing=True)  # the backward reruns the hooks
        return train(load_config(values=values))

    result = run("grounded", 1.0)
    records = [json.loads(line) for line in (tmp_path / "grounded/logs/metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(np.isfinite(r["grounding_loss"]) and r["grounding_loss"] > 0 for r in records)
    assert all(r["loss"] > r["grounding_loss"] for r in records)  # the total includes it
    assert all(not m._forward_pre_hooks for m in cross_attentions(result.components.unet).values())  # removed
    trained, initial = load_components(result.model_dir), load_components(tiny_model_dir)
    assert trained.unet.state_dict().keys() == initial.unet.state_dict().keys()
    # The loss reaches the weights: the same run without it ends elsewhere.
    control = run("control", 0.0)
    assert "grounding_loss" not in json.loads((tmp_path / "control/logs/metrics.jsonl").read_text().splitlines()[0])
    assert not torch.equal(result.components.unet.conv_in.weight, control.components.unet.conv_in.weight)
