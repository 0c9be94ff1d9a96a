"""The tiny CLIP tokenizer that tests and the toy model build from local vocab/merges files."""
from __future__ import annotations

import pytest

from lc4.cmpf import COLOR_NAMES
from lc4.init_model import TINY_WORDS, write_tiny_tokenizer


def test_every_word_of_the_default_vocabulary_is_one_token(tmp_path):
    tokenizer = write_tiny_tokenizer(tmp_path)
    words = sorted({w for name in (*TINY_WORDS, *COLOR_NAMES) for w in name.lower().split()})
    # Earlier merges must not split later words (the merge "a n" for "and" once cut "orange"
    # into four pieces, and "woman", "pants", ... likewise).
    assert [w for w in words if len(tokenizer.tokenize(w)) != 1] == []
    ids = tokenizer("a woman in an orange dress", add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["a</w>", "woman</w>", "in</w>", "an</w>", "orange</w>", "dress</w>"]


def test_toy_words_are_one_token_and_unknown_words_fall_back_to_pieces(tmp_path):
    from lc4.toy.model import TOY_WORDS

    tokenizer = write_tiny_tokenizer(tmp_path, words=TOY_WORDS, model_max_length=24)
    caption = "a teal triangle, an orange star and a gray square on a black background"
    assert tokenizer.tokenize(caption) == [w + "</w>" for w in caption.replace(",", " ,").split()]
    assert "".join(tokenizer.tokenize("zorblat")).replace("</w>", "") == "zorblat"
    assert len(tokenizer.tokenize("zorblat")) > 1
    assert len(tokenizer) == len(set(tokenizer.get_vocab().values()))


@pytest.mark.parametrize("words", [["car", "card", "cards"], ["ab", "abab", "ba", "bab"]])
def test_words_sharing_pieces_still_come_out_whole(tmp_path, words):
    tokenizer = write_tiny_tokenizer(tmp_path, words=words)
    assert [tokenizer.tokenize(w) for w in words] == [[w + "</w>"] for w in words]
