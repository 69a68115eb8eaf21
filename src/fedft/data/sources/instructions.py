"""Instruction data from the user's files (csv, tsv, jsonl, parquet, hf): a chat per row, either a messages column
(data.messages_column: a list of {role, content}, or its JSON text, ending with the assistant's turn) or a prompt and
a response column (data.prompt_column, data.response_column); data.client_column names natural clients. Bad rows
are refused with one line naming the file, the row and the column: nothing is silently dropped from what a model is
taught. Not a source itself: table.loaded hands a file whose columns are instructions here.
"""
from __future__ import annotations

import json

import numpy as np

from fedft.errors import UsageError


def is_instructions(columns: dict, cfg) -> bool:
    """The file holds instructions (not text + label): a messages column, or a prompt and a response column."""
    if cfg.text_column in columns and cfg.label_column in columns:
        return False
    return cfg.messages_column in columns or cfg.prompt_column in columns or cfg.response_column in columns


def chats_of(columns: dict, cfg, key: str) -> list[list[dict]]:
    found = list(columns)
    if cfg.messages_column in columns:
        out = []
        for i, cell in enumerate(columns[cfg.messages_column]):
            where = f"{key}: row {i + 1}, column {cfg.messages_column!r}"
            if isinstance(cell, str):
                try:
                    cell = json.loads(cell)
                except json.JSONDecodeError:
                    raise UsageError(f"{where}: not a JSON list of {{role, content}} turns") from None
            if not isinstance(cell, (list, tuple)) or not all(isinstance(t, dict) and "role" in t and "content" in t
                                                              for t in cell):
                raise UsageError(f"{where}: a chat is a list of {{role, content}} turns")
            chat = [{"role": str(t["role"]), "content": str(t["content"] or "")} for t in cell]
            if not chat or chat[-1]["role"] != "assistant":
                raise UsageError(f"{where}: the chat has no assistant turn at its end to learn")
            if not chat[-1]["content"].strip():
                raise UsageError(f"{where}: the assistant's last turn is empty")
            out.append(chat)
        return out
    for col, setting in ((cfg.prompt_column, "data.prompt_column"), (cfg.response_column, "data.response_column")):
        if col not in columns:
            raise UsageError(f"{key}: no column {col!r} ({setting}); the file has columns {found}")
    out = []
    for i, (p, r) in enumerate(zip(columns[cfg.prompt_column], columns[cfg.response_column])):
        for value, col in ((p, cfg.prompt_column), (r, cfg.response_column)):
            if value is None or not str(value).strip():
                raise UsageError(f"{key}: row {i + 1}, column {col!r}: empty (every example needs a prompt and a "
                                 f"response)")
        out.append([{"role": "user", "content": str(p).strip()}, {"role": "assistant", "content": str(r).strip()}])
    return out


def loaded_instructions(columns: dict, cfg, key: str, test_columns: dict | None, test_key: str):
    """The Loaded of an instruction file: natural clients from data.client_column, the test set from data.test or
    data.test_fraction of each client's rows (a fixed split)."""
    from fedft.data import Instructions, split_fraction
    from fedft.data.sources import Loaded
    from fedft.data.sources.table import _label_order, _label_text

    chats = chats_of(columns, cfg, key)
    natural = cfg.partition == "natural"
    if natural:
        if cfg.client_column not in columns:
            raise UsageError(f"{key}: no column {cfg.client_column!r} (data.client_column, needed by data.partition "
                             f"= 'natural'); the file has columns {list(columns)}")
        names = []
        for i, v in enumerate(columns[cfg.client_column]):
            if not _label_text(v):
                raise UsageError(f"{key}: row {i + 1} has no client ({cfg.client_column!r} is empty)")
            names.append(_label_text(v))
        classes = sorted(set(names), key=_label_order)
        index = {g: j for j, g in enumerate(classes)}
        labels = np.array([index[g] for g in names], dtype=np.int64)
    else:
        classes, labels = ["all"], np.zeros(len(chats), dtype=np.int64)
    raw = Instructions(chats, [[] for _ in chats], labels, classes)
    if test_columns is not None:
        test_chats = chats_of(test_columns, cfg, test_key)
        train = raw
        test = Instructions(test_chats, [[] for _ in test_chats], np.zeros(len(test_chats), dtype=np.int64), classes)
    else:
        tr, te = split_fraction(labels, cfg.test_fraction)
        train, test = raw.pick(tr), raw.pick(te)
    report = {"rows_read": len(chats), "rows_used": len(chats), "dropped": {},
              "test": "data.test" if test_columns is not None else f"{cfg.test_fraction:g} of each client held out"}
    return Loaded(train, test, train.labels.copy() if natural else None, classes if natural else [], report)
