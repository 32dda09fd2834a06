"""Typed errors of the model package: each carries a machine-readable ``code`` and a human message."""

from __future__ import annotations

from typing import ClassVar

from shared.errors import CodedError


class ModelError(CodedError, ValueError):
    """Base class. ``code`` is stable and machine-readable (e.g. ``model.bad_input``)."""

    str_template: ClassVar[str] = "[{code}] {message}"


class ModelInputError(ModelError):
    """A tensor handed to the network has the wrong shape, dtype, range or batch size."""


class ConfigError(ModelError):
    """A model configuration is inconsistent, or a profile name is unknown."""


class CheckpointError(ModelError):
    """A checkpoint or serialised avatar cannot be used (corrupt, wrong config, wrong model version)."""
