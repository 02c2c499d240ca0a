"""The demo's data: the UCI optical handwritten digits, shipped in ``funcsparse/data/``.

1797 images of 8x8 pixels (integers 0..16) of the digits 0..9, read with the standard
library (``gzip``, ``csv``) into tensors. The file is the copy scikit-learn distributes;
``funcsparse/data/README.md`` gives its source, authors and licence (:data:`DIGITS_CREDIT`).
"""

from __future__ import annotations

import csv
import gzip
import io
from importlib import resources

import torch
from torch import Tensor

__all__ = ["DIGITS_CREDIT", "N_CLASSES", "N_PIXELS", "load_digits", "split"]

DIGITS_CREDIT = (
    "UCI optical recognition of handwritten digits (E. Alpaydin, C. Kaynak, 1998; "
    "CC BY 4.0; https://doi.org/10.24432/C50P49), the copy scikit-learn distributes"
)
"""Where the digits come from: source, authors, licence, and whose copy funcsparse ships."""

N_PIXELS = 64
"""Pixels per image (8x8)."""

N_CLASSES = 10
"""Classes: the digits 0..9."""

_FILE = "digits.csv.gz"
_MAX_PIXEL = 16.0


def load_digits() -> tuple[Tensor, Tensor]:
    """The 1797 digits as float32 pixels scaled to [0, 1] and int64 labels.

    Examples:
        >>> x, y = load_digits()
        >>> tuple(x.shape), x.dtype, tuple(y.shape), y.dtype
        ((1797, 64), torch.float32, (1797,), torch.int64)
        >>> float(x.min()), float(x.max()), y.unique().tolist()
        (0.0, 1.0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])

    Returns:
        ``(x, y)``: ``x`` of shape ``(1797, 64)`` (each row an 8x8 image, row by row, its
        pixel counts 0..16 divided by 16), ``y`` of shape ``(1797,)``, the digits.

    Raises:
        ValueError: the shipped file is damaged (a row without 65 integers in range).
    """
    data = (resources.files("funcsparse") / "data" / _FILE).read_bytes()
    text = io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(data)), encoding="ascii")
    rows: list[list[int]] = []
    for number, row in enumerate(csv.reader(text), start=1):
        try:
            values = [int(value) for value in row]
        except ValueError:
            values = []
        if len(values) != N_PIXELS + 1 or not all(0 <= v <= _MAX_PIXEL for v in values[:-1]):
            raise ValueError(f"load_digits: row {number} of {_FILE} is not 64 pixels and a label")
        if not 0 <= values[-1] < N_CLASSES:
            raise ValueError(f"load_digits: row {number} of {_FILE} has label {values[-1]}")
        rows.append(values)
    table = torch.tensor(rows, dtype=torch.int64)
    return table[:, :N_PIXELS].float() / _MAX_PIXEL, table[:, N_PIXELS].clone()


def split(
    x: Tensor, y: Tensor, *, seed: int, test_fraction: float = 0.2
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A fixed train/test split: a permutation drawn from ``seed`` (global RNG untouched).

    Examples:
        >>> x, y = load_digits()
        >>> x_train, y_train, x_test, y_test = split(x, y, seed=0)
        >>> len(x_train), len(x_test)
        (1438, 359)
        >>> bool((split(x, y, seed=0)[3] == y_test).all())
        True

    Args:
        x: inputs, one row per example.
        y: labels, one per row of ``x``.
        seed: seeds the permutation.
        test_fraction: share of the examples held out, rounded down. Default 0.2.

    Returns:
        ``(x_train, y_train, x_test, y_test)``.
    """
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]
