"""Batch shapes: bucket lengths and left padding (one compiled program per shape)."""

import numpy as np
import pytest

from lladax.batching import bucket_length, left_pad


def test_bucket_lengths_are_at_most_one_and_a_half_apart():
    assert [bucket_length(n) for n in (1, 16, 17, 24, 25, 33, 49, 65, 97)] == [
        16, 16, 24, 24, 32, 48, 64, 96, 128
    ]  # fmt: skip
    for n in range(1, 3000):
        b = bucket_length(n)
        assert b >= n and (n <= 16 or b < 1.5 * n), n
    # every length maps onto the grid 16, 24, 32, 48, 64, ...: few distinct programs
    assert len({bucket_length(n) for n in range(1, 1025)}) == 13


def test_left_pad_aligns_rows_at_the_right_and_fills_the_batch():
    tokens, mask = left_pad([[5, 6, 7], [8]], pad_id=0, width=4, num_rows=3)
    np.testing.assert_array_equal(tokens, [[0, 5, 6, 7], [0, 0, 0, 8], [0, 0, 0, 8]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    assert tokens.dtype == mask.dtype == np.int32
    tokens, mask = left_pad([[1, 2], [3]], pad_id=9)  # defaults: the longest row, no fill
    np.testing.assert_array_equal(tokens, [[1, 2], [9, 3]])
    np.testing.assert_array_equal(mask, [[1, 1], [0, 1]])


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        ([], {}, "at least one row"),
        ([[1, 2, 3]], {"width": 2}, "width=2 is shorter than the longest row \\(3\\)"),
        ([[1], [2]], {"num_rows": 1}, "num_rows=1 is fewer than the 2 rows given"),
    ],
)
def test_left_pad_refuses_impossible_shapes(rows, kwargs, message):
    with pytest.raises(ValueError, match=message):
        left_pad(rows, 0, **kwargs)
