"""Dynamic batching: size-or-timeout windows measured from each batch's first item."""

from workers.batching.batcher import Batch, Batcher

__all__ = ["Batch", "Batcher"]
