"""Errors raised by stream_learner.

    StreamLearnerError              base; ``retriable`` says whether a restart may help
    ├── ConfigError                 settings that cannot work together
    ├── CheckpointError             a checkpoint cannot be written or read
    │   └── CheckpointMismatchError the newest checkpoint does not fit the settings
    ├── DeliveryError               the broker did not acknowledge a produced record
    ├── BrokerCapabilityError       the broker lacks something the settings need (transactions)
    ├── BrokerRefusedError          the broker answers and refuses the client (SASL, TLS)
    ├── LeadershipLostError         a trainer was deposed: another trainer leads now
    └── LeadershipUnconfirmedError  a trainer cannot tell now whether it still leads

Bad records are not errors: they are values (:class:`stream_learner.records.Rejected`)
that go to the dead-letter topic.
"""

from __future__ import annotations


class StreamLearnerError(Exception):
    """Base of every error this package raises on purpose."""

    retriable: bool = False


class ConfigError(StreamLearnerError):
    """The settings are inconsistent or name something that does not exist."""


class CheckpointError(StreamLearnerError):
    """A checkpoint could not be written or read back."""

    retriable = True


class CheckpointMismatchError(CheckpointError):
    """The newest checkpoint was made for another model shape or task.

    Raised instead of silently starting a fresh model, which would throw away
    everything the saved model learned.
    """

    retriable = False


class DeliveryError(StreamLearnerError):
    """A produced record was not acknowledged; the cut cannot move past it."""

    retriable = True


class BrokerCapabilityError(StreamLearnerError):
    """The broker cannot do what the settings ask for (e.g. transactions for ``delivery=exactly_once``)."""


class BrokerRefusedError(StreamLearnerError):
    """A broker answered and refused the client: a SASL mechanism or credentials it rejects, a certificate
    that does not verify. Settings to fix, not a broker to wait for."""


class LeadershipLostError(StreamLearnerError):
    """This trainer no longer leads (it was paused or cut off past the session timeout, and another trainer
    was elected): it stops before it writes a checkpoint or publishes. Restarted, it stands by."""

    retriable = True


class LeadershipUnconfirmedError(StreamLearnerError):
    """The election group cannot confirm this trainer's leadership now (the broker does not answer, or the
    group is rebalancing): what needed it (a checkpoint, a version) waits for the next try."""

    retriable = True
