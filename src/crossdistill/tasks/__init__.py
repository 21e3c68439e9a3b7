"""Tasks: classification, segmentation, depth, translation."""
from .base import TASKS, Task, create_task, register_task

from . import classification, segmentation, depth, translation  # noqa: F401,E402

__all__ = ["TASKS", "Task", "create_task", "register_task"]
