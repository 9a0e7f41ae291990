"""What this machine is and how fast it runs the pool's model: probe, benchmark, cache, profile.

Importing this package (or :mod:`app.hardware.probe`) does not import torch, so the tray can
show machine facts at start-up; the benchmark modules load torch when they run.
"""

from __future__ import annotations

RUNTIME_VERSION = "butterfly-runtime/2"
"""Revision of the model runtime's compute path; bump it when a change alters layer speed,
so cached benchmarks are measured again."""
