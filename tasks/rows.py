"""Row-wise vector maths that several wings share: unit rows, on numpy or Dask arrays."""

from __future__ import annotations

import dask.array as da
import numpy as np


def normalise_rows(x):
    """Rows divided by their norms along the last axis (zero rows stay zero); numpy or Dask."""
    lib = da if isinstance(x, da.Array) else np
    norms = lib.sqrt((x * x).sum(axis=-1, keepdims=True))
    return x / lib.where(norms == 0, 1, norms)
