"""Checkpoints of a federated run: after every round, everything the next round depends on, written atomically to
the run folder, so `fedft run --resume RUN_DIR` continues exactly where the run stopped."""
from __future__ import annotations

import os
from pathlib import Path

import torch

NAME = "checkpoint.pt"


def object_state(obj) -> dict:
    """An object's attributes (a strategy's momentum, client DP's noise generator and clip), its config left out."""
    if obj is None:
        return {}
    return {k: (("generator", v.get_state()) if isinstance(v, torch.Generator) else v)
            for k, v in vars(obj).items() if k != "cfg" and not callable(v)}


def restore(obj, state: dict) -> None:
    for k, v in state.items():
        if isinstance(v, tuple) and len(v) == 2 and v[0] == "generator":
            getattr(obj, k).set_state(v[1])
        else:
            setattr(obj, k, v)


def save(folder: Path, state: dict) -> None:
    """Write the checkpoint atomically: a crash leaves the previous one or the new one, never a torn file."""
    tmp = folder / f".{NAME}.{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, folder / NAME)


def load(folder: Path) -> dict:
    from fedft.errors import UsageError

    try:
        return torch.load(folder / NAME, weights_only=False)  # written by fedft itself, in the user's run folder
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UsageError(f"--resume {str(folder)!r}: {NAME} is damaged ({str(e).splitlines()[0][:100]}); the run "
                         f"cannot continue from it") from None
