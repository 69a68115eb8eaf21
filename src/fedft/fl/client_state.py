"""What methods keep per client between rounds (SCAFFOLD's control variates, FedSA's own B matrices): a mapping
client id -> state that exists only for clients that have trained, and past `fl.client_state_mb` in memory sends
the least recently used states to disk, one safetensors file a client in a temporary folder (removed when the run
ends), so a million clients with state fit on a laptop. Reading a state back gives the same tensors bit for bit.

A checkpoint (torch.save pickles the strategy or hook holding it) carries every state, those on disk read back
one after another into the checkpoint's dict.
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
from collections import OrderedDict
from pathlib import Path

import torch

from fedft.errors import UsageError
from fedft.fl.comm import owned
from fedft.fl.parts import Build, part

State = dict[str, torch.Tensor]


class ClientStates:
    def __init__(self, cap_mb: float = 0.0) -> None:
        self.cap = int(cap_mb * 1e6)  # bytes in memory; 0 = no cap
        self._memory: OrderedDict[int, State] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._on_disk: set[int] = set()
        self._order: dict[int, None] = {}  # every client with a state, in the order each first got one (as a dict)
        self._folder: Path | None = None

    def get(self, cid: int, default: State | None = None) -> State | None:
        if cid in self._memory:
            self._memory.move_to_end(cid)
            return self._memory[cid]
        if cid in self._on_disk:
            from safetensors.torch import load_file

            state = load_file(str(self._path(cid)))
            self._on_disk.discard(cid)
            self._keep(cid, state)
            return state
        return default

    def __getitem__(self, cid: int) -> State:
        state = self.get(cid)
        if state is None:
            raise KeyError(cid)
        return state

    def __setitem__(self, cid: int, state: State) -> None:
        if cid in self._memory:
            self._bytes -= _size(self._memory.pop(cid))
        self._on_disk.discard(cid)
        self._order.setdefault(cid, None)
        self._keep(cid, state)

    def __contains__(self, cid) -> bool:
        return cid in self._memory or cid in self._on_disk

    def __len__(self) -> int:
        return len(self._order)

    def keys(self) -> list[int]:
        return list(self._order)

    def values(self):
        """Every state, in the order the clients first got one, as a dict iterates (those on disk read back)."""
        for cid in self.keys():
            yield self[cid]

    def items(self):
        for cid in self.keys():
            yield cid, self[cid]

    def __bool__(self) -> bool:
        return len(self) > 0

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    @property
    def spilled(self) -> int:
        return len(self._on_disk)

    def _keep(self, cid: int, state: State) -> None:
        self._memory[cid] = state
        self._bytes += _size(state)
        while self.cap and self._bytes > self.cap and len(self._memory) > 1:
            old, gone = self._memory.popitem(last=False)
            self._bytes -= _size(gone)
            self._spill(old, gone)

    def _spill(self, cid: int, state: State) -> None:
        from safetensors.torch import save_file

        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="fedft-client-state-"))
            weakref.finalize(self, shutil.rmtree, str(self._folder), True)
        tmp = self._path(cid).with_suffix(".tmp")
        save_file({k: owned(v.detach().contiguous()) for k, v in state.items()}, str(tmp))
        tmp.replace(self._path(cid))
        self._on_disk.add(cid)

    def _path(self, cid: int) -> Path:
        return self._folder / f"{cid}.safetensors"

    # a checkpoint holds every state; a restored store starts with them in memory, under the same cap
    def __getstate__(self) -> dict:
        return {"cap": self.cap, "states": {cid: self.get(cid) for cid in self.keys()}}

    def __setstate__(self, saved: dict) -> None:
        self.__init__(saved["cap"] / 1e6)
        for cid, state in saved["states"].items():
            self[cid] = state


def _size(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


@part(5)
def check_cap(b: Build) -> None:
    """fl.client_state_mb must hold at least one client's state (all its trainable parameters)."""
    cap = b.exp.config.fl.client_state_mb
    one = _size(b.exp.params) / 1e6
    if cap and cap < one:
        raise UsageError(f"fl.client_state_mb = {cap:g}: below one client's state ({one:.3g} MB, its trainable "
                         f"parameters); use 0 (no cap) or at least {one:.3g}")
