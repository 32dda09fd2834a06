"""Typed errors of the training package: ``code`` is machine readable, the message is for humans."""

from __future__ import annotations


class TrainingError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        # Picklable across processes (DDP spawn, multiprocessing) despite the (code, message) signature.
        return (type(self), (self.code, str(self)))


class DataError(TrainingError):
    """A dataset folder, shard or sample is missing or malformed."""


class WeightsError(TrainingError):
    """A pretrained-weights file (LPIPS backbone / lin layers, FID Inception) is missing, unreadable
    or does not match the network written here (a key is absent or has another shape)."""
