"""Folders that appear whole or not at all: written into a fresh temporary folder beside the target, then renamed
into place (one rename, atomic on one file system), so a crash or a Ctrl-C never leaves a half-written one."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_folder(out: str | Path, save: Callable[[Path], None], exists: str = "refuse", mode: int = 0o755) -> Path:
    """`save(tmp)` writes the folder's files into `tmp`; then `tmp` becomes `out`. Where `out` is already there:
    exists = "refuse" (its caller checked first; the rename fails rather than overwrite), "keep" (a cache that
    another process filled first: theirs stays, ours goes) or "replace" (the old folder is removed first). `mode`:
    the folder's permissions (mkdtemp's 700 would hide a model folder from the other users of a shared cache)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        save(tmp)
        tmp.chmod(mode)
        if exists == "replace" and out.exists():
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:
            if exists != "keep" or not out.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
