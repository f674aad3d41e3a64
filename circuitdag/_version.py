"""circuitdag's installed version, in a module of its own so that any module can read it
without importing the package (whose ``__init__`` imports most modules: a circle)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("circuitdag")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
