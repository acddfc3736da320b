"""The records of one model version on the models topic, and putting them back together.

A version is the model's ``state_dict`` saved by ``torch.save`` (it loads with ``weights_only=True``: a
record cannot run code), cut into chunks of at most ``MAX_CHUNK_BYTES``, one record each, published in
order. Each record carries the version's metadata in the ``stream-learner-model`` header (JSON): its
``generation`` and ``step``, the sha256 of the whole payload, ``created_at``, the offsets it was trained
through, the model spec, and which chunk of how many the record holds.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import torch

HEADER = "stream-learner-model"
MAX_CHUNK_BYTES = 512 * 1024
"""Half of Kafka's default message limit (``message.max.bytes``, 1 MiB), with room for the header."""

Offsets = Mapping[str, Mapping[int, int]]
"""Next offsets by topic and partition (as a checkpoint keeps them)."""
Record = tuple[bytes, bytes, list[tuple[str, bytes]]]
"""Key, value and headers of one record to produce."""


class BadVersionError(ValueError):
    """A version record that cannot be used: its header, its checksum or its weights."""


@dataclass(frozen=True)
class VersionInfo:
    """What a version record's header says."""

    generation: int
    step: int
    sha256: str
    created_at: float
    size: int
    chunk: int
    chunks: int
    trained_through: dict[str, dict[str, int]] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    durable: bool = False
    """The weights of a checkpoint (True), or of the model between checkpoints."""

    @property
    def order(self) -> tuple[int, int]:
        """Newer versions have a greater ``(generation, step)``."""
        return (self.generation, self.step)


@dataclass(frozen=True)
class ModelVersion:
    """A whole version whose payload matched its checksum."""

    info: VersionInfo
    payload: bytes

    def weights(self) -> dict[str, torch.Tensor]:
        """The state_dict, loaded with ``weights_only=True``; raises :class:`BadVersionError` if it is not one."""
        try:
            state = torch.load(io.BytesIO(self.payload), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BadVersionError(f"the weights do not load: {type(exc).__name__}: {exc}") from exc
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise BadVersionError("the payload is not a state_dict of tensors")
        return state


def encode_version(
    weights: dict[str, torch.Tensor],
    generation: int,
    step: int,
    *,
    trained_through: Offsets,
    spec: dict[str, Any],
    durable: bool,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> list[Record]:
    """The records of one version, in the order they must be produced (to one partition)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in weights.items()}, buffer)
    payload = buffer.getvalue()
    digest, created_at = hashlib.sha256(payload).hexdigest(), time.time()
    pieces = [payload[i : i + max_chunk_bytes] for i in range(0, len(payload), max_chunk_bytes)] or [b""]
    key = f"{generation}.{step}".encode()
    records = []
    for index, piece in enumerate(pieces):
        meta = {
            "generation": generation, "step": step, "sha256": digest, "created_at": created_at,
            "size": len(payload), "chunk": index, "chunks": len(pieces),
            "trained_through": trained_through, "spec": spec, "durable": durable,
        }  # fmt: skip
        records.append((key, piece, [(HEADER, orjson.dumps(meta, option=orjson.OPT_NON_STR_KEYS))]))
    return records


def read_info(headers: Any) -> VersionInfo:
    """The header of a version record; raises :class:`BadVersionError` when it has none that parses."""
    raw = next((value for key, value in headers or () if key == HEADER), None)
    if raw is None:
        raise BadVersionError(f"no {HEADER} header")
    try:
        meta = orjson.loads(raw)
        info = VersionInfo(**meta)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise BadVersionError(f"the {HEADER} header does not parse: {exc}") from exc
    numbers = (info.generation, info.step, info.size, info.chunk, info.chunks)
    if not all(isinstance(n, int) and n >= 0 for n in numbers) or info.chunk >= info.chunks:
        raise BadVersionError(f"the {HEADER} header is not a version's: {meta!r}")
    return info


class VersionAssembler:
    """Puts versions back together from their records, read in offset order.

    :meth:`add` returns a version when its last chunk arrives and the payload matches its sha256; it raises
    :class:`BadVersionError` for a record or version that cannot be used. Chunks of another version in
    between (a deposed trainer's late records) start that version over.
    """

    def __init__(self) -> None:
        self._info: VersionInfo | None = None
        self._pieces: list[bytes] = []

    def add(self, value: bytes | None, headers: Any) -> ModelVersion | None:
        info = read_info(headers)
        if info.chunk == 0:
            self._info, self._pieces = info, []
        elif self._info is None or (self._info.order, self._info.sha256) != (info.order, info.sha256):
            self._info = None
            raise BadVersionError(f"chunk {info.chunk} of version {info.order} without its earlier chunks")
        if len(self._pieces) != info.chunk:
            self._info = None
            raise BadVersionError(f"chunk {info.chunk} of version {info.order} out of order")
        self._pieces.append(value or b"")
        if info.chunk + 1 < info.chunks:
            return None
        payload, self._info, self._pieces = b"".join(self._pieces), None, []
        if len(payload) != info.size or hashlib.sha256(payload).hexdigest() != info.sha256:
            raise BadVersionError(f"version {info.order} does not match its sha256")
        return ModelVersion(info, payload)
