"""Chunks of queries for the derivatives computed in PyTorch (forward mode, second order).

Queries are independent rows of Eq. 3, so a derivative of tda_attention taken one chunk of
queries at a time is exactly the whole call's: per-query results are put side by side, results
over the shared map (k, v, points) summed. A chunk holds at most ``LC4_SCORE_CHUNK_ELEMENTS``
score elements over batch and heads, so the ``Nq x Nk`` scores of the whole call never exist at
once. The default is 2**20 on a CPU, where smaller chunks took the same time or less and half the
peak memory of 2**22 (``python -m benchmarks.higher_order``), and 2**22 on other devices, where
each chunk costs a few dozen kernel launches.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

CHUNK_ENV = "LC4_SCORE_CHUNK_ELEMENTS"
DEFAULT_CHUNK_ELEMENTS = {"cpu": 1 << 20}
OTHER_DEVICES_CHUNK_ELEMENTS = 1 << 22


def chunk_elements(device: torch.device | str = "cpu") -> int:
    """Score elements (over batch and heads) a chunk of queries on ``device`` may hold:
    ``LC4_SCORE_CHUNK_ELEMENTS`` or the device's default."""
    text = os.environ.get(CHUNK_ENV, "").strip()
    if not text:
        return DEFAULT_CHUNK_ELEMENTS.get(torch.device(device).type, OTHER_DEVICES_CHUNK_ELEMENTS)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{CHUNK_ENV}: expected a positive number of score elements, got {text!r}")
    return value


def rows_per_chunk(batch: int, heads: int, num_keys: int, device: torch.device) -> int:
    return max(1, chunk_elements(device) // max(1, batch * heads * num_keys))


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
