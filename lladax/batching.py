"""Batch shapes that keep the number of compiled programs small.

A jitted function compiles once per input shape, so variable-length work (prompts, SFT samples,
likelihood pairs) is padded to a few bucket lengths and every batch is filled to one row count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket_length(n: int) -> int:
    """Padded length for a sequence of n tokens: 16, 24, 32, 48, 64, 96, … (≤ 1.5× apart), so a
    stream of varied lengths compiles about two programs per doubling and wastes < 1/3."""
    if n <= 16:
        return 16
    p = 1 << (n - 1).bit_length()
    return 3 * p // 4 if n <= 3 * p // 4 else p


def left_pad(
    rows: Sequence[Sequence[int]],
    pad_id: int,
    *,
    width: int | None = None,
    num_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists into (tokens int32 [num_rows, width], attention_mask int32 same).

    Prompts are left-padded so that every row's generation starts at the same column. `width`
    defaults to the longest row; `num_rows` (>= len(rows)) fills the batch with copies of the last
    row, so a final short batch runs the same compiled program (callers ignore the copies).
    """
    if not rows:
        raise ValueError("left_pad needs at least one row")
    longest = max(len(r) for r in rows)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"left_pad width={width} is shorter than the longest row ({longest})")
    num_rows = len(rows) if num_rows is None else num_rows
    if num_rows < len(rows):
        raise ValueError(f"left_pad num_rows={num_rows} is fewer than the {len(rows)} rows given")
    filled = list(rows) + [rows[-1]] * (num_rows - len(rows))
    tokens = np.full((num_rows, width), pad_id, np.int32)
    mask = np.zeros((num_rows, width), np.int32)
    for i, r in enumerate(filled):
        if len(r):
            tokens[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
    return tokens, mask
