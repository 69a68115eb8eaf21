"""Per-client state past fl.client_state_mb goes to disk and comes back bit for bit, checkpoints carry it, and a run
with its clients' state spilled equals the run that kept it in memory."""
import json
import pickle

import pytest
import torch

import fedft
from fedft.cli import main
from fedft.config import load_config
from fedft.fl.client_state import ClientStates


def state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(50, 20, generator=g), "b": torch.randn(20, generator=g)}  # 4,080 bytes


def test_spilled_states_round_trip_exactly_under_the_cap():
    store = ClientStates(cap_mb=0.01)  # 10,000 bytes: two states in memory
    for cid in (7, 3, 11, 5, 0):
        store[cid] = state(cid)
    assert store.memory_bytes <= 10_000 and store.spilled == 3 and len(store) == 5
    assert store.keys() == [7, 3, 11, 5, 0]  # the order they first got a state, as a dict
    for cid in (7, 3, 11, 5, 0):
        got = store[cid]
        assert all(torch.equal(got[k], state(cid)[k]) for k in got)
        assert store.memory_bytes <= 10_000
    store[3] = state(99)  # a new state replaces the one on disk
    assert torch.equal(store.get(3)["w"], state(99)["w"]) and store.get(42) is None and 42 not in store
    again = pickle.loads(pickle.dumps(store))  # what a checkpoint holds: every state, spilled ones included
    assert again.keys() == store.keys() and all(torch.equal(again[c]["w"], store[c]["w"]) for c in store.keys())
    assert again.memory_bytes <= 10_000


def test_a_cap_below_one_clients_state_is_refused(tiny, tmp_path, capsys):
    args = [a for s in tiny(**{"fl.strategy": "scaffold", "fl.optimizer": "sgd", "fl.client_state_mb": 1e-6})
            for a in ("--set", s)]
    assert main(["run", "--quiet", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert "fl.client_state_mb = 1e-06: below one client's state" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra", [
    {"fl.strategy": "scaffold", "fl.optimizer": "sgd", "fl.lr": 0.05, "method.name": "bias"},
    {"method.name": "lora", "method.variant": "fedsa", "data.client_test_fraction": 0.25},
    {"fl.mode": "local", "method.name": "bias", "data.client_test_fraction": 0.25},
], ids=["scaffold", "fedsa", "local-models"])
def test_a_run_with_its_client_state_on_disk_equals_one_in_memory(tiny, tmp_path, extra, monkeypatch):
    spills = []
    spill = ClientStates._spill
    monkeypatch.setattr(ClientStates, "_spill", lambda self, cid, st: (spills.append(cid), spill(self, cid, st)))
    sets = tiny(**{"fl.rounds": 3, "fl.clients_per_round": 3, **extra})
    config = load_config(None, sets)
    one = sum(p.numel() * 4 for p in fedft.api.prepare(config).params.values()) / 1e6
    kept = fedft.run(config, tmp_path / "memory")
    spilled = fedft.run(load_config(None, [*sets, f"fl.client_state_mb={one * 1.01}"]), tmp_path / "disk")
    assert [r["accuracy"] for r in kept.rounds] == [r["accuracy"] for r in spilled.rounds]
    assert [r["train_loss"] for r in kept.rounds] == [r["train_loss"] for r in spilled.rounds]
    assert [r.get("client_accuracy") for r in kept.rounds] == [r.get("client_accuracy") for r in spilled.rounds]
    final = json.loads((tmp_path / "disk" / "results.json").read_text())["final"]
    assert final["accuracy"] == kept.final["accuracy"] and spills  # states did go to disk, and came back


def test_resume_with_client_state_on_disk_is_bit_identical(tiny, tmp_path):
    from test_resume import same

    sets = tiny(**{"fl.rounds": 4, "fl.clients_per_round": 3, "method.name": "bias", "fl.strategy": "scaffold",
                   "fl.optimizer": "sgd", "fl.lr": 0.05})
    one = sum(p.numel() * 4 for p in fedft.api.prepare(load_config(None, sets)).params.values()) / 1e6
    sets.append(f"fl.client_state_mb={one * 1.5}")  # one client's control in memory, the others on disk
    fedft.run(load_config(None, sets), tmp_path / "whole")

    def stop_after_two(line):
        if line.startswith("round   2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedft.run(load_config(None, sets), tmp_path / "cut", log=stop_after_two)
    assert main(["run", "--quiet", "--resume", str(tmp_path / "cut")]) == 0
    same(tmp_path / "whole", tmp_path / "cut")
