"""Tiny tasks for sweeps: a task returns a few bytes, as a parameter sweep's often do."""

from __future__ import annotations

import numpy as np


def seed_value(task: dict) -> np.float64:
    return np.float64(task["seed"])
