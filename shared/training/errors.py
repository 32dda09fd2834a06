"""Typed errors of the training package: ``code`` is machine readable, the message is for humans."""

from __future__ import annotations

from shared.errors import CodedError


class TrainingError(CodedError, ValueError):
    """``TrainingError(code, message)``; pickles across processes (DDP spawn, multiprocessing)."""


class DataError(TrainingError):
    """A dataset folder, shard or sample is missing or malformed."""


class WeightsError(TrainingError):
    """A pretrained-weights file (LPIPS backbone / lin layers, FID Inception) is missing, unreadable
    or does not match the network written here (a key is absent or has another shape)."""
