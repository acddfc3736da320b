"""Checkpointing: the Checkpoint (what is safe to commit, and the protocol), the cut, the atomic
store, the choice of the checkpoint to restore, and transactions for exactly-once delivery."""
