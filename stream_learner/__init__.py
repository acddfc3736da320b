"""stream_learner: learn and predict from Kafka streams with PyTorch.

Events are micro-batched through a model and published as predictions; labels
that arrive later are joined back to their events and drive optimizer steps;
model, optimizer, join state and offsets are checkpointed together.
"""

from stream_learner.config import Settings
from stream_learner.errors import (
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    DeliveryError,
    StreamLearnerError,
)
from stream_learner.service import Service
from stream_learner.settings_loading import load_settings

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "ConfigError",
    "DeliveryError",
    "Service",
    "Settings",
    "StreamLearnerError",
    "load_settings",
]
__version__ = "0.1.0"
