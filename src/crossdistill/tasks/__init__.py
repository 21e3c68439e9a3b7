"""Tasks: classification, segmentation, depth, translation, self_supervised."""
from .base import TASKS, Task, create_task, register_task

from . import classification, segmentation, depth, translation, self_supervised  # noqa: F401,E402

__all__ = ["TASKS", "Task", "create_task", "register_task"]
