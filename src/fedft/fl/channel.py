"""The wire between server and clients in a simulation: every state and extra is encoded at comm.dtype and decoded
again (the receiver sees exactly what was sent), and bytes are the encoded payloads' lengths."""
from __future__ import annotations

from fedft.fl import comm
from fedft.fl.messages import Instruction, State, Update


class Channel:
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self._sizes: dict[int, int] = {}  # id(decoded state) -> its encoded length, for states sent to many

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
                ins.state, n = self._trip(ins.state)
                sent += n
            for key, extra in ins.extras.items():
                ins.extras[key], n = self._trip(extra)
                sent += n
        return instructions, sent

    def up(self, updates: list[Update]) -> tuple[list[Update], int]:
        """The updates as the server receives them, and the bytes sent."""
        sent = 0
        for u in updates:
            u.state, n = self._trip(u.state)
            sent += n
            for key, extra in u.extras.items():
                u.extras[key], n = self._trip(extra)
                sent += n
        return updates, sent

    def _trip(self, state: State) -> tuple[State, int]:
        payload = comm.encode(state, self.dtype)
        return comm.decode(payload), len(payload)
