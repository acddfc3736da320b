"""Offset resets: records deleted (by retention) before they were read, made visible.

aiokafka resets a position that fell below the log start and says so only in an INFO log
line of its fetcher; the filter below turns that line into a call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka import TopicPartition

OffsetReset = Callable[[TopicPartition, int], None]
# private API: aiokafka reports a reset only in this INFO line of its fetcher; there is no callback.
_FETCHER_LOG = "aiokafka.consumer.fetcher"


class _OffsetResetWatch(logging.Filter):
    """Turns aiokafka's "fetch offset out of range, resetting" (INFO, where nobody sees it) into a call.

    Records below ``threshold`` are dropped here as before: the logger's level is lowered only so
    that this one message reaches the filter.
    """

    def __init__(self) -> None:
        super().__init__()
        self.callback: OffsetReset | None = None
        self.threshold = logging.WARNING

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if str(record.msg).startswith("Fetch offset %s is out of range") and isinstance(args, tuple) and len(args) == 2:
            offset, tp = args
            if self.callback is not None and isinstance(tp, TopicPartition) and isinstance(offset, int):
                self.callback(tp, offset)
            return False
        return record.levelno >= self.threshold


_offset_reset_watch = _OffsetResetWatch()


def watch_offset_resets(callback: OffsetReset) -> None:
    """Call ``callback(tp, offset)`` whenever a consumer finds its position on ``tp`` below the log start
    (the records were deleted, by retention, before they were read) and resets it. Replaces the last callback."""
    logger = logging.getLogger(_FETCHER_LOG)
    if _offset_reset_watch not in logger.filters:
        _offset_reset_watch.threshold = logger.getEffectiveLevel()
        logger.addFilter(_offset_reset_watch)
        logger.setLevel(min(logging.INFO, _offset_reset_watch.threshold))
    _offset_reset_watch.callback = callback
