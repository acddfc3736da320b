"""Event ids as fixed-size keys: what the join's stores keep instead of the id strings.

An id's UTF-8 bytes, zero-padded to 16, are its key; an id longer than 16 bytes is kept as
its 16-byte BLAKE2b digest (length ``DIGESTED``), so a key costs the same whatever the
length of its id. Keys are read as two uint64 words; a store keeps only the first word
while every key it holds fits in 8 bytes. Ids are non-empty: a key of length 0 marks a
free row in a store.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
import torch

DIGESTED = 0xFFFF
"""Key length that marks a digested id (longer than the widest raw key)."""
MAX_WIDTH = 16
"""Bytes of the widest key."""
_MIX = np.uint64(0xD6E8FEB86659FD93)
_WORD_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F], dtype=np.uint64)


class EventKeys(NamedTuple):
    """Encoded ids: ``words`` uint64 ``[n, 2]`` (16 key bytes), ``lengths`` uint16, 64-bit ``hashes``."""

    words: np.ndarray
    lengths: np.ndarray
    hashes: np.ndarray
    wide: bool
    """Whether some key needs more than 8 bytes (a store of 8-byte keys widens for it)."""

    def take(self, rows: np.ndarray) -> EventKeys:
        """The keys at ``rows``."""
        return EventKeys(self.words[rows], self.lengths[rows], self.hashes[rows], self.wide)


def event_keys(ids: list[str]) -> EventKeys:
    """Each id encoded once; every store takes the same words and hashes (see :func:`hash_keys`)."""
    keys, lengths = encode_ids(ids)
    words = keys.view(np.uint64).reshape(len(ids), MAX_WIDTH // 8)
    wide = _needs_wide(keys, lengths)
    return EventKeys(words, lengths, hash_keys(words if wide else words[:, :1], lengths), wide)


def encode_ids(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(keys uint8 [n, 16], lengths uint16 [n])``: UTF-8 bytes zero-padded, or a digest past 16 bytes."""
    encoded = [i.encode("utf-8", "surrogatepass") for i in ids]
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    long = lengths > MAX_WIDTH
    if long.any():
        for row in np.flatnonzero(long).tolist():
            encoded[row] = hashlib.blake2b(encoded[row], digest_size=MAX_WIDTH).digest()
        lengths[long] = DIGESTED
    keys = np.zeros((len(encoded), MAX_WIDTH), np.uint8)
    if encoded:
        packed = np.array(encoded, dtype=f"S{MAX_WIDTH}")
        keys[:] = packed.view(np.uint8).reshape(len(encoded), MAX_WIDTH)
    return keys, lengths.astype(np.uint16)


def _needs_wide(keys: np.ndarray, lengths: np.ndarray) -> bool:
    """Whether some key (uint8 ``[n, width]``) needs more than 8 bytes: a nonzero byte past 8, or a longer length."""
    return len(lengths) > 0 and bool(keys[:, 8:].any() or (lengths > 8).any())


def hash_keys(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """64-bit hash of keys (``uint64 [n, w]``); zero words add nothing, so widening keeps hashes."""
    h: np.ndarray = lengths.astype(np.uint64) * _MIX
    for j in range(words.shape[1]):
        h ^= words[:, j] * _WORD_MULT[j]
    h ^= h >> np.uint64(31)
    h *= _MIX
    h ^= h >> np.uint64(29)
    return h


def has_repeats(values: np.ndarray) -> bool:
    """Whether some value occurs twice (a sort, cheaper than ``np.unique`` with its indices)."""
    ordered = np.sort(values)
    return bool((ordered[1:] == ordered[:-1]).any())


def distinct_keys(keys: EventKeys, rows: np.ndarray) -> np.ndarray:
    """``rows`` (one row of each distinct hash) plus the last row of each other key that shares a
    hash with a kept row but differs from it: a true 64-bit collision keeps both ids."""
    words, lengths, hashes = keys.words, keys.lengths, keys.hashes
    keep = set(rows.tolist())
    kept_by_hash = {int(hashes[r]): r for r in rows.tolist()}
    for r in range(len(hashes)):
        if r in keep:
            continue
        k = kept_by_hash[int(hashes[r])]
        if lengths[r] != lengths[k] or (words[r] != words[k]).any():
            later = [q for q in range(r + 1, len(hashes)) if lengths[q] == lengths[r] and (words[q] == words[r]).all()]
            if not later:
                keep.add(r)
    return np.asarray(sorted(keep), np.int64)


def stored_words(keys: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Keys (uint8 ``[n, width]``, as :func:`encode_ids` or a state dict has them) as uint64 words,
    8 bytes wide where they all fit."""
    n = len(lengths)
    width = MAX_WIDTH if _needs_wide(keys, lengths) else 8
    words: np.ndarray = (
        np.ascontiguousarray(keys.reshape(n, keys.shape[-1] if keys.ndim == 2 else 0)[:, :width])
        .view(np.uint64)
        .reshape(n, width // 8)
    )
    return words


def keys_from_state(state: dict[str, object], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Words and lengths of the ``{name}_keys`` of a state dict, or of its ``{name}_ids`` strings
    (older checkpoints)."""
    if f"{name}_keys" in state:
        keys = state[f"{name}_keys"].numpy()  # type: ignore[attr-defined]  # a tensor in a state dict
        lengths = state[f"{name}_key_lengths"].numpy().astype(np.uint16)  # type: ignore[attr-defined]  # a tensor
    else:
        keys, lengths = encode_ids(state[f"{name}_ids"])  # type: ignore[arg-type]  # a list of str in a state dict
    return stored_words(keys, lengths), lengths


def key_tensors(words: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored keys (uint64 words ``[n, w]``) as uint8 ``[n, 8 * w]`` and their int32 lengths, fresh copies."""
    keys = np.ascontiguousarray(words).view(np.uint8).reshape(len(lengths), words.shape[1] * 8).copy()
    return torch.from_numpy(keys), torch.from_numpy(lengths.astype(np.int32))
