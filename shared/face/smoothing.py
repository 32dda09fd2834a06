"""One-Euro filter (Casiez, Roussel, Vogel, CHI 2012) for per-frame face parameters.

A first-order low-pass whose cutoff rises with the signal's speed: slow motion (where jitter shows)
is smoothed hard, fast motion follows with little lag. ``min_cutoff`` (Hz) sets the smoothing at
rest, ``beta`` how quickly the cutoff opens with speed, ``d_cutoff`` (Hz) the low-pass on the speed
estimate itself. The state is a small dataclass, so filtering can continue across video chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneEuroConfig:
    min_cutoff: float = 1.0
    beta: float = 0.0
    d_cutoff: float = 1.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
            raise ValueError("One-Euro cutoffs must be > 0 and beta >= 0")


@dataclass
class OneEuroState:
    value: np.ndarray | None = None  # last filtered value
    speed: np.ndarray | None = None  # last filtered derivative (units per second)


def _smoothing_factor(cutoff: np.ndarray | float, period: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / period)


class OneEuroFilter:
    """Vector One-Euro filter at a fixed frame rate (each dimension filtered independently)."""

    def __init__(self, config: OneEuroConfig, fps: float) -> None:
        if fps <= 0:
            raise ValueError("fps must be > 0")
        self.config = config
        self.period = 1.0 / fps

    def step(self, value: np.ndarray, state: OneEuroState) -> np.ndarray:
        """Filter one sample, updating ``state`` in place."""
        value = np.asarray(value, dtype=np.float64)
        if not self.config.enabled:
            state.value = value.copy()
            return value.copy()
        if state.value is None or state.value.shape != value.shape:
            state.value = value.copy()
            state.speed = np.zeros_like(value)
            return value.copy()
        raw_speed = (value - state.value) / self.period
        alpha_d = _smoothing_factor(self.config.d_cutoff, self.period)
        speed = alpha_d * raw_speed + (1.0 - alpha_d) * state.speed
        cutoff = self.config.min_cutoff + self.config.beta * np.abs(speed)
        alpha = _smoothing_factor(cutoff, self.period)
        filtered = alpha * value + (1.0 - alpha) * state.value
        state.value, state.speed = filtered, speed
        return filtered.copy()

    def filter_sequence(self, values: np.ndarray, state: OneEuroState) -> np.ndarray:
        """Filter (T, ...) samples in order; ``state`` carries over to the next call."""
        values = np.asarray(values, dtype=np.float64)
        return np.stack([self.step(v, state) for v in values]) if len(values) else values.copy()


def frame_jitter(values: np.ndarray) -> float:
    """Mean absolute second difference over time of (T, ...) samples: high for frame-to-frame
    noise, ~0 for smooth motion (a constant velocity has zero second difference)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 3:
        return 0.0
    return float(np.abs(values[2:] - 2.0 * values[1:-1] + values[:-2]).mean())


@dataclass(frozen=True)
class SmoothingConfig:
    """One-Euro settings per parameter group of a face track.

    Units: rotation = head rotation vector (radians), translation = world units, expression =
    blendshape weights. ``beta`` is per unit of speed (units per second) of each group.
    """

    fps: float = 25.0
    rotation: OneEuroConfig = OneEuroConfig(min_cutoff=1.0, beta=2.0, d_cutoff=1.0)
    translation: OneEuroConfig = OneEuroConfig(min_cutoff=1.0, beta=5.0, d_cutoff=1.0)
    # Expression: fast speed estimate (d_cutoff 4 Hz) and a cutoff that opens quickly (beta 8), so a
    # mouth opening or a blink passes within the frame it happens (a 0.8 step: 95 % on that frame)
    # while a still face keeps the 1.5 Hz smoothing.
    expression: OneEuroConfig = OneEuroConfig(min_cutoff=1.5, beta=8.0, d_cutoff=4.0)
    enabled: bool = True

    def group(self, name: str) -> OneEuroConfig:
        config: OneEuroConfig = getattr(self, name)
        if not self.enabled:
            return OneEuroConfig(config.min_cutoff, config.beta, config.d_cutoff, enabled=False)
        return config


class GroupSmoother:
    """One-Euro filters for the named groups of ``SmoothingConfig`` with explicit, picklable state."""

    GROUPS = ("rotation", "translation", "expression")

    def __init__(self, config: SmoothingConfig) -> None:
        self.config = config
        self.filters = {name: OneEuroFilter(config.group(name), config.fps) for name in self.GROUPS}

    @classmethod
    def new_state(cls) -> dict[str, OneEuroState]:
        return {name: OneEuroState() for name in cls.GROUPS}

    def step(self, values: dict[str, np.ndarray], state: dict[str, OneEuroState]) -> dict[str, np.ndarray]:
        return {name: self.filters[name].step(values[name], state[name]) for name in self.GROUPS}
