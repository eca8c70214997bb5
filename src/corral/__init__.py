"""Corral: a fair-share GPU cluster manager and monitor for labs and companies."""

__version__ = "0.1.0"
