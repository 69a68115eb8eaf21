"""The data-source interface and its registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fedft.errors import UsageError
from fedft.registry import Registry


@dataclass
class Loaded:
    train: object  # LabelledText | LabelledImages
    test: object
    groups: np.ndarray | None = None  # (len(train),) the natural client of each training row (data.client_column)
    group_names: list[str] = field(default_factory=list)  # groups[i] indexes this list, in a stable order
    report: dict = field(default_factory=dict)  # rows read, used and dropped (and why), for the start line/results


@dataclass(frozen=True)
class Source:
    name: str  # `wordnet-nouns`, or a prefix such as `csv` for `csv:PATH`
    kind: str  # text | image | table (text or images, by the columns found)
    load: Callable[[str, object], Loaded]  # (the part after the prefix, or "", DataConfig) -> Loaded
    prefix: bool = False
    doc: str = ""

    @property
    def shown(self) -> str:
        return f"{self.name}:PATH" if self.prefix else self.name


SOURCES: Registry[Source] = Registry("data source")


def source(name: str, kind: str, doc: str, prefix: bool = False):
    """Decorator: register `load` as the data source `name` (`prefix`: named `name:PATH`)."""
    def add(load):
        SOURCES.register(name)(Source(name, kind, load, prefix, doc))
        return load

    return add


def find(data_name: str) -> tuple[Source, str]:
    """(source, its argument) for a data.name; an unknown name is one line listing every source."""
    head, sep, rest = data_name.partition(":")
    names = SOURCES.names()
    if sep and head in names and SOURCES.get(head, "data.name").prefix:
        if not rest:
            raise UsageError(f"data.name = {data_name!r}: give a path after '{head}:'")
        return SOURCES.get(head, "data.name"), rest
    if data_name in names and not SOURCES.get(data_name, "data.name").prefix:
        return SOURCES.get(data_name, "data.name"), ""
    shown = ", ".join(SOURCES.get(n, "").shown for n in names)
    raise UsageError(f"data.name = {data_name!r}: unknown data set; choose one of {shown}")
