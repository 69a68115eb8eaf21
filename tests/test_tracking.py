"""log.tensorboard: every round's numbers as TensorBoard scalars (step = round) for both tasks, equal to the rows
in results.json; log.mlflow_uri without mlflow installed is one line, exit 2."""
import importlib.util
import json

import pytest

import fedft
from fedft.cli import main
from fedft.config import load_config


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("task", ["classify", "instruct"])
def test_tensorboard_scalars_are_the_rows(tmp_path, tiny, task):
    extra = {"method.name": "bias"} if task == "classify" else {
        "model.name": "tiny-llama", "data.name": "wordnet-instruct", "data.train_per_class": 3,
        "data.test_per_class": 1, "task.generate": 2, "task.max_new_tokens": 4}
    result = fedft.run(load_config(None, tiny(**{**extra, "log.tensorboard": True})), tmp_path / "run")
    rows = json.loads((result.out_dir / "results.json").read_text())["rounds"]
    got = events(result.out_dir / "tensorboard")
    headline = "accuracy" if task == "classify" else "rougeL"
    for key in (headline, "loss", "train_loss", "bytes_up", "bytes_down"):
        assert got[key] == {r["round"]: pytest.approx(r[key]) for r in rows if r[key] is not None}, key


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed here")
def test_mlflow_without_the_package_is_one_line(tmp_path, tiny, capsys):
    args = ["run", *[a for s in tiny(**{"log.mlflow_uri": str(tmp_path / "mlruns")}) for a in ("--set", s)],
            "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "log.mlflow_uri" in err and "pip install mlflow" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()
