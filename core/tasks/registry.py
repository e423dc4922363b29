"""The head families' tasks by ``head.type``: what turns a head's raw outputs into a loss or detections.

A head family's task module registers its class here (``@TASKS.register("yolo")``); ``core.tasks.task``
imports every task module and builds the one a config names. This module imports none of them, so a
task module can import it without a cycle.
"""
from __future__ import annotations

from symbol.registry import Registry

TASKS: Registry = Registry("head")
