"""Data sources: each file here registers one `data.name` (a fixed name like `wordnet-nouns`, or a prefix like
`csv:` followed by a path). A new source is one file; `load_dataset` never asks which one it reads.

A source returns a `Loaded`: the training and test splits (LabelledText or LabelledImages), each training row's
natural client when the data names one (`data.client_column`), and what reading kept and dropped.
"""
from fedft.data.sources.base import SOURCES, Loaded, Source, find  # noqa: F401
from fedft.registry import discover

discover(__name__)
