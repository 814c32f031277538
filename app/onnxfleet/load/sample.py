"""The default request: POST /run_model with one real 8x8 digits image (no scikit-learn needed)."""

from __future__ import annotations

import json

DEFAULT_PATH = "/run_model"

# sklearn.datasets.load_digits().data[0] (label 0): 64 grey levels in 0..16, row by row.
DIGIT_ZERO: tuple[float, ...] = (
    0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0,
    0.0, 0.0, 13.0, 15.0, 10.0, 15.0, 5.0, 0.0,
    0.0, 3.0, 15.0, 2.0, 0.0, 11.0, 8.0, 0.0,
    0.0, 4.0, 12.0, 0.0, 0.0, 8.0, 8.0, 0.0,
    0.0, 5.0, 8.0, 0.0, 0.0, 9.0, 8.0, 0.0,
    0.0, 4.0, 11.0, 0.0, 1.0, 12.0, 7.0, 0.0,
    0.0, 2.0, 14.0, 5.0, 10.0, 12.0, 0.0, 0.0,
    0.0, 0.0, 6.0, 13.0, 10.0, 0.0, 0.0, 0.0,
)  # fmt: skip

DEFAULT_BODY: bytes = json.dumps({"inputs": [list(DIGIT_ZERO)]}).encode()
