"""Intake: decode -> EventBatch | Rejected, one decoder per record type (events, labels); the micro-batcher.

Decoders never raise on bad input: a record that cannot be used comes back as a
:class:`~stream_learner.records.Rejected` with a reason, and every good record around it
is decoded as usual.
"""
