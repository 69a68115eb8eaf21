"""comm.budget_mb: the run ends cleanly once the next round's uploads would pass the budget."""
import json

import fedft
from fedft.cli import main
from fedft.config import load_config


def test_run_stops_before_the_budget_is_passed_and_says_why(tiny, tmp_path):
    probe = fedft.run(load_config(None, tiny(**{"method.name": "bias", "fl.rounds": 1, "fl.eval_every": 5})),
                      tmp_path / "probe")
    per_round = json.loads((probe.out_dir / "results.json").read_text())["final"]["bytes_up"]
    budget = 2.5 * per_round / 1e6
    sets = tiny(**{"method.name": "bias", "fl.rounds": 5, "fl.eval_every": 5, "comm.budget_mb": budget})
    result = fedft.run(load_config(None, sets), tmp_path / "budget")
    data = json.loads((result.out_dir / "results.json").read_text())
    assert data["status"] == "completed" and len(data["rounds"]) == 2
    assert data["upload_budget"]["stopped"]["after_round"] == 2
    assert "round 3 would upload" in data["upload_budget"]["stopped"]["reason"]
    assert data["final"]["bytes_up"] <= budget * 1e6 < data["final"]["bytes_up"] + per_round
    assert data["rounds"][-1]["accuracy"] is not None  # the last round is scored though eval_every is 5
    assert data["final"]["accuracy"] == data["rounds"][-1]["accuracy"]
    assert not (result.out_dir / "checkpoint.pt").exists()


def test_a_budget_below_one_round_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", *[a for s in tiny(**{"comm.budget_mb": 1e-6}) for a in ("--set", s)], "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "less than one round's uploads" in err and "\n" not in err
    assert not out.exists()
