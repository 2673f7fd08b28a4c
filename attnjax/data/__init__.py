"""Seeded, infinite, resumable data streams for tasks that need attention."""

from attnjax.data.tasks import (
    TASKS,
    AssociativeRecall,
    Batch,
    CharLM,
    Copy,
    Induction,
    ZoologyMQAR,
    make_task,
)

__all__ = [
    "TASKS",
    "AssociativeRecall",
    "Batch",
    "CharLM",
    "Copy",
    "Induction",
    "ZoologyMQAR",
    "make_task",
]
