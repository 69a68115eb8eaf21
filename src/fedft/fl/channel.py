"""The wire between server and clients in a simulation: every state and extra is encoded at comm.dtype and decoded
again (the receiver sees exactly what was sent), and bytes are the encoded payloads' lengths.

With a quantised comm.dtype (int8, nf4) a client sends its update (trained state minus the state it received),
quantised, and the server adds it back to that state; with error feedback (comm.error_feedback) each client keeps
what quantisation dropped and adds it to its next update. States sent down are quantised as they are; extras
(SCAFFOLD's control variates, statistics) travel as float32.
"""
from __future__ import annotations

import torch

from fedft.fl import comm
from fedft.fl.messages import Instruction, State, Update


class Channel:
    def __init__(self, dtype: str, error_feedback: bool = True) -> None:
        self.dtype = dtype
        self.delta = dtype in comm.QUANTISED
        self.error_feedback = error_feedback and self.delta
        self.extras_dtype = "float32" if self.delta else dtype
        self._sizes: dict[int, int] = {}  # id(decoded state) -> its encoded length, for states sent to many
        self._received: dict[int, State] = {}  # quantised: each client's start this round (its update's origin)
        self.residual: dict[int, State] = {}  # error feedback: what quantisation dropped from a client's last update

    def trip(self, state: State) -> State:
        """`state` as it arrives at the other end."""
        payload = comm.encode(state, self.dtype)
        out = comm.decode(payload)
        self._sizes = {id(out): len(payload)}
        return out

    def down(self, instructions: list[Instruction]) -> tuple[list[Instruction], int]:
        """The instructions as the clients receive them (extras through the wire), and the bytes sent."""
        sent = 0
        for ins in instructions:
            if id(ins.state) in self._sizes:  # the global state, already through the wire
                sent += self._sizes[id(ins.state)]
            else:  # a state of this client's own
                ins.state, n = self._trip(ins.state, self.dtype)
                sent += n
            for key, extra in ins.extras.items():
                ins.extras[key], n = self._trip(extra, self.extras_dtype)
                sent += n
            if self.delta:
                self._received[ins.cid] = ins.state
        return instructions, sent

    def up(self, updates: list[Update]) -> tuple[list[Update], int]:
        """The updates as the server receives them, and the bytes sent."""
        sent = 0
        for u in updates:
            if self.delta:
                u.state, n = self._up_quantised(u.cid, u.state)
            else:
                u.state, n = self._trip(u.state, self.dtype)
            sent += n
            for key, extra in u.extras.items():
                u.extras[key], n = self._trip(extra, self.extras_dtype)
                sent += n
        return updates, sent

    def _up_quantised(self, cid: int, state: State) -> tuple[State, int]:
        start, carry = self._received[cid], self.residual.get(cid, {})
        delta = {k: state[k] - start[k] + carry[k] if k in carry else state[k] - start[k] for k in sorted(state)}
        payload = comm.encode(delta, self.dtype)
        got = comm.decode(payload)
        if self.error_feedback:
            self.residual[cid] = {k: delta[k] - got[k] for k in delta}
        return {k: start[k] + got[k] for k in sorted(state)}, len(payload)

    def _trip(self, state: State, dtype: str) -> tuple[State, int]:
        payload = comm.encode(state, dtype)
        return comm.decode(payload), len(payload)

    def state(self) -> dict:
        """Checkpoint: the clients' error-feedback memories."""
        return {"residual": {str(c): {k: v.clone() for k, v in r.items()} for c, r in self.residual.items()}}

    def restore(self, state: dict) -> None:
        self.residual = {int(c): {k: torch.as_tensor(v) for k, v in r.items()} for c, r in state["residual"].items()}
