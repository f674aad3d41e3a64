"""Exception hierarchy. Every message says what went wrong and what to do."""

from __future__ import annotations


class CircuitDagError(Exception):
    """Base class of every error circuitdag raises on purpose."""


class TaskError(CircuitDagError):
    """A task is unknown, broken, or its prompts/answers are not usable."""


class ModelError(CircuitDagError):
    """A model cannot be found, loaded, or lacks the hooks circuitdag needs."""


class MetricError(CircuitDagError):
    """A metric is unknown or produced a non-finite value."""


class CircuitFileError(CircuitDagError):
    """A circuit file is unreadable or not in the circuitdag format."""


class ConfigError(CircuitDagError):
    """An option has an invalid value (negative threshold, bad ablation, ...)."""


class MissingExtraError(CircuitDagError):
    """An optional dependency is needed; the message names the extra to install."""


class CheckpointError(ConfigError):
    """A checkpoint is damaged, or was written by a run with other settings."""
