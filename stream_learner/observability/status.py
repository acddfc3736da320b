"""What observability reads from the running service: the :class:`ServiceStatus` Protocol.

The metrics, the health endpoints and TensorBoard see the service only through it, so they
never reach into its parts (join buffer, trainer, schedule) and tests can hand them a plain fake.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from aiokafka import TopicPartition


class ServiceStatus(Protocol):
    """The running service as observability sees it; every method is called on the service's event loop."""

    @property
    def restored(self) -> bool:
        """True once the checkpoint is restored (or none was found): :meth:`stats` holds the service's own totals."""

    def stats(self) -> dict[str, Any]:
        """Totals, gauges and prequential figures by key (:mod:`.service_metrics` lists the keys it reads)."""

    def health(self) -> dict[str, Any]:
        """Readiness (``ready``) and its parts, ``checkpoint_age_s`` and ``assigned_partitions``."""

    def lag_by_partition(self) -> dict[TopicPartition, int]:
        """Records not yet read per assigned partition."""

    def named_parameters(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The model's parameters by name (read, never written, from the event loop)."""
