"""Errors raised for bad user input. Each message names what is wrong and what to do next."""

from __future__ import annotations


class TrigreconError(Exception):
    """Base class of every error trigrecon raises on purpose."""


class ConfigError(TrigreconError, ValueError):
    """A config field or argument has a bad value (wrong layer, empty prompt set, ...)."""


class WeightsNotFoundError(TrigreconError, FileNotFoundError):
    """Model, adapter or SAE weights are neither on disk nor reachable on the hub."""


class CorruptWeightsError(TrigreconError, ValueError):
    """A weights file exists but cannot be used: truncated, unreadable, or NaN/inf values."""


class IncompatibleSAEError(TrigreconError, ValueError):
    """An SAE (or its label file) does not fit the model it is used with."""


class OptimizationError(TrigreconError, RuntimeError):
    """An optimiser produced NaN/inf or diverged."""
