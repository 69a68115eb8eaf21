"""Tasks: what the model learns and how it is scored. Each task is one file that registers itself (discovered)."""
from fedft.registry import discover
from fedft.tasks.base import TASKS, Task  # noqa: F401

discover(__name__)
