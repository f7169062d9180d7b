"""Deterministic text embeddings for `/v1/embeddings`: a bag of hashed words, L2-normalised.

Each lower-cased word adds +-1 to one of `dim` coordinates, both chosen by a CRC32 of the word,
so texts sharing words get similar vectors (cosine similarity grows with word overlap) and the
same text always gets the same vector, in any process. An empty text maps to the first axis.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

_WORD = re.compile(r"\w+")


def embed_text(text: str, dim: int = 64) -> np.ndarray:
    """A unit vector of length `dim` for `text`."""
    hashes = np.fromiter(
        (zlib.crc32(word.encode("utf-8")) for word in _WORD.findall(text.lower())),
        dtype=np.uint64,
    )
    if hashes.size == 0:
        vector = np.zeros(dim)
        vector[0] = 1.0
        return vector
    buckets = (hashes % dim).astype(np.intp)
    signs = np.where((hashes >> np.uint64(16)) & np.uint64(1), 1.0, -1.0)
    vector = np.bincount(buckets, weights=signs, minlength=dim)
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        vector = np.bincount(buckets, minlength=dim).astype(float)
        norm = float(np.linalg.norm(vector))
    return vector / norm
