"""Checkpoint and resume: a run killed mid-way (SIGKILL) and resumed ends bit-identical to one never stopped."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import fedft
from fedft.cli import main
from fedft.config import load_config

FEDFT = str(Path(sys.executable).parent / "fedft")


def adapter(folder: Path):
    files = sorted(folder.rglob("*.safetensors"))  # the exported trained parameters, whatever the method
    return {str(f.relative_to(folder)): load_file(f) for f in files}


def same(a: Path, b: Path) -> None:
    wa, wb = adapter(a), adapter(b)
    assert wa and wa.keys() == wb.keys()
    for name in wa:
        for k in wa[name]:
            assert wa[name][k].equal(wb[name][k]), k
    ra, rb = (json.loads((f / "results.json").read_text()) for f in (a, b))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(ra["rounds"]) == strip(rb["rounds"])
    assert ra["final"]["accuracy"] == rb["final"]["accuracy"] and rb["status"] == "completed"


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, tiny):
    sets = tiny(**{"method.name": "lora", "fl.rounds": 5, "fl.strategy": "fedadam", "data.partition": "dirichlet",
                   "fl.batch_size": 4})
    fedft.run(load_config(None, sets), tmp_path / "whole")
    args = [FEDFT, "run", "--quiet", "--out", str(tmp_path / "killed"), *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / "killed" / "results.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(json.loads(results.read_text())["rounds"]) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(json.loads(results.read_text())["rounds"])
    assert 2 <= done < 5, f"the run was not stopped mid-way ({done} rounds)"
    assert subprocess.run([FEDFT, "run", "--quiet", "--resume", str(tmp_path / "killed")]).returncode == 0
    same(tmp_path / "whole", tmp_path / "killed")
    assert not (tmp_path / "killed" / "checkpoint.pt").exists()


@pytest.mark.parametrize("extra", [
    {"method.name": "bias", "fl.strategy": "fedavgm", "dp.mode": "client", "dp.noise_multiplier": 0.5,
     "dp.clip": 1.0},
    {"method.name": "layers", "method.select": "gradient", "method.budget_min": 1, "method.budget_max": 2,
     "method.reselect_every": 3, "data.partition": "dirichlet"},
    {"method.name": "lora", "dp.mode": "sample", "dp.noise_multiplier": 1.0, "dp.clip": 1.0, "fl.batch_size": 8},
    {"method.name": "lora", "proxy.kind": "fedpft", "proxy.keep_layers": [0], "proxy.ffn_neurons": 8,
     "proxy.distill_steps": 3, "proxy.align_every": 2, "proxy.align_steps": 3},
    {"method.name": "bias", "fl.strategy": "scaffold", "fl.optimizer": "sgd", "fl.lr": 0.05, "fl.momentum": 0.5},
    {"method.name": "lora", "comm.dtype": "nf4", "fl.clients_per_round": 2},
    {"method.name": "lora", "method.variant": "fedex"},
    {"method.name": "lora", "method.variant": "flora"},
    {"method.name": "lora", "method.variant": "flexlora", "method.rank_min": 2, "method.rank_max": 6},
    {"method.name": "lora", "method.variant": "fedsa", "fl.clients_per_round": 2, "data.client_test_fraction": 0.25},
    {"method.name": "lora", "method.variant": "hetlora", "method.rank_min": 3, "method.rank_max": 8,
     "method.prune_lambda": 5.0, "fl.lr": 0.02},
    {"method.name": "lora_sb", "method.rank": 4},
    {"model.name": "tiny-llama", "data.name": "wordnet-instruct", "data.train_per_class": 3, "data.test_per_class": 1,
     "task.generate": 2, "task.max_new_tokens": 4, "model.max_length": 48, "fl.batch_size": 8},
], ids=["client-dp-fedavgm", "layers", "sample-dp", "fedpft", "scaffold-sgd", "nf4-error-feedback", "fedex",
        "flora", "flexlora-ranks", "fedsa", "hetlora-pruning", "lora-sb", "instruct-tiny-llama"])
def test_resume_after_ctrl_c(tmp_path, tiny, server_text, extra):
    """Client DP's noise generator and adaptive clip with FedAvgM's momentum, the layer masks (re-chosen every 3
    rounds, so round 3 reuses round 1's), the per-client DP accountants, and FedPFT's sub-model FFNs re-aligned in
    round 2 come back from the checkpoint: the resumed run is bit-identical, epsilon and the full model's accuracy
    included."""
    if "proxy.kind" in extra:
        extra = {**extra, "proxy.distill_data": f"file:{server_text}"}
    sets = tiny(**{"fl.rounds": 4, "fl.clients_per_round": 3, **extra})
    fedft.run(load_config(None, sets), tmp_path / "whole")  # (nf4: 2 of 4 clients a round, so clients come back
    # with error-feedback memory from before the cut)

    def stop_after_two(line):
        if line.startswith("round   2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedft.run(load_config(None, sets), tmp_path / "cut", log=stop_after_two)
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["status"] == "interrupted"
    assert main(["run", "--quiet", "--resume", str(tmp_path / "cut")]) == 0
    same(tmp_path / "whole", tmp_path / "cut")


def test_resume_refusals(tmp_path, tiny, capsys):
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err
    fedft.run(load_config(None, tiny(**{"method.name": "bias"})), tmp_path / "done")
    assert main(["run", "--resume", str(tmp_path / "done")]) == 2
    assert "already completed" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "done"), "--set", "fl.rounds=3"]) == 2
    assert "give no config" in capsys.readouterr().err
    # damaged files: one line, exit 2, never a traceback
    record = json.loads((tmp_path / "done" / "results.json").read_text())
    (tmp_path / "done" / "results.json").write_text(json.dumps({**record, "status": "interrupted"}))
    (tmp_path / "done" / "checkpoint.pt").write_bytes(b"PK\x03\x04 torn")
    assert main(["run", "--resume", str(tmp_path / "done")]) == 2
    assert "checkpoint.pt is damaged" in capsys.readouterr().err
    (tmp_path / "done" / "results.json").write_text('{"config": {"fl": ')
    assert main(["run", "--resume", str(tmp_path / "done")]) == 2
    assert "results.json is damaged" in capsys.readouterr().err


def _cut_after_two(tmp_path, sets):
    def stop_after_two(line):
        if line.startswith("round   2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedft.run(load_config(None, sets), tmp_path / "cut", log=stop_after_two)
    return tmp_path / "cut"


def test_resume_of_an_edited_config_is_refused_and_leaves_the_run_as_it_was(tmp_path, tiny, capsys):
    cut = _cut_after_two(tmp_path, tiny(**{"method.name": "lora", "fl.rounds": 4}))
    record = json.loads((cut / "results.json").read_text())
    record["config"]["method"]["name"] = "bias"
    (cut / "results.json").write_text(json.dumps(record))
    before = {p.name: p.read_bytes() for p in cut.iterdir()}
    assert main(["run", "--quiet", "--resume", str(cut)]) == 2
    err = capsys.readouterr().err.strip()
    assert "method.name = 'lora' then, 'bias' now" in err and "\n" not in err and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in cut.iterdir()} == before


def test_resume_without_its_checkpoint_says_it_is_missing(tmp_path, tiny, capsys):
    cut = _cut_after_two(tmp_path, tiny(**{"method.name": "bias", "fl.rounds": 4}))
    (cut / "checkpoint.pt").unlink()
    assert main(["run", "--quiet", "--resume", str(cut)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is missing" in err and "2 finished rounds" in err, err
