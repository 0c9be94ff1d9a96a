"""Chunks of queries for the derivatives computed in PyTorch (forward mode, second order).

Queries are independent rows of Eq. 3, so a derivative of tda_attention taken one chunk of
queries at a time is exactly the whole call's: per-query results are put side by side, results
over the shared map (k, v, points) summed. A chunk holds at most ``LC4_SCORE_CHUNK_ELEMENTS``
(default 2**22) score elements over batch and heads, so the ``Nq x Nk`` scores of the whole call
never exist at once.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

CHUNK_ENV = "LC4_SCORE_CHUNK_ELEMENTS"
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def chunk_elements() -> int:
    """Score elements (over batch and heads) a chunk of queries may hold: ``LC4_SCORE_CHUNK_ELEMENTS``
    or the default."""
    text = os.environ.get(CHUNK_ENV, "").strip()
    if not text:
        return DEFAULT_CHUNK_ELEMENTS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{CHUNK_ENV}: expected a positive number of score elements, got {text!r}")
    return value


def rows_per_chunk(batch: int, heads: int, num_keys: int) -> int:
    return max(1, chunk_elements() // max(1, batch * heads * num_keys))


def over_query_chunks(fn: Callable[[slice], Sequence[torch.Tensor]], num_queries: int, rows: int,
                      per_query: Sequence[bool]) -> tuple:
    """``fn(chunk)`` for every chunk of ``rows`` queries (dimension 1), combined: outputs marked in
    ``per_query`` side by side along dimension 1, the others summed. ``fn(slice(None))`` alone when
    one chunk holds every query."""
    if rows >= num_queries:
        return tuple(fn(slice(None)))
    results: list[torch.Tensor] = []
    for start in range(0, num_queries, rows):
        chunk = slice(start, start + rows)
        outputs = fn(chunk)
        if not results:
            # Buffers made from a chunk's output, so that they are batched or dual as the inputs
            # are under vmap or nested forward mode. Chunks appended to a list would sit between
            # the freed score-sized temporaries and keep malloc's heap from reusing them (the
            # resident memory grew by a chunk's scores a chunk on glibc).
            results = [out.new_empty((out.shape[0], num_queries, *out.shape[2:])) if split else out
                       for out, split in zip(outputs, per_query)]
        for index, (out, split) in enumerate(zip(outputs, per_query)):
            if split:
                results[index][:, chunk] = out
            elif start:
                results[index] = results[index] + out
    return tuple(results)
