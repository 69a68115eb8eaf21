"""The command line: bad input is one line on stderr, exit 2, nothing written; the commands' outputs."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fedft.cli import main


def sets(pairs):
    return [a for p in pairs for a in ("--set", p)]


BAD = [
    (["model.name=no-such-model"], "model.name = 'no-such-model'"),
    (["data.name=imagenet"], "data.name = 'imagenet'"),
    (["method.name=nope"], "method.name = 'nope': unknown method; choose one of adapter, bias, dora, full"),
    (["fl.strategy=fedsgd"], "fl.strategy = 'fedsgd': unknown strategy; choose one of fedadam"),
    (["fl.roundz=2"], "unknown config key fl.roundz (did you mean 'rounds'?)"),
    (["fl.rounds=2.5"], "fl.rounds = 2.5: must be an integer"),
    (["fl.rounds=0"], "fl.rounds = 0: must be >= 1"),
    (["data.alpha=0"], "data.alpha = 0.0: must be > 0"),
    (["fl.clients_per_round=9"], "fl.clients_per_round = 9: must be <= data.num_clients (4)"),
    (["data.name=csv:/no/such.csv"], "data.name = 'csv:/no/such.csv': file does not exist"),
    (["fl.lr=nan"], "fl.lr = nan: must be a finite number"),
    (["model.max_length=500"], "model.max_length = 500: model 'tiny-bert' takes at most 128 positions"),
    (["method.name=prompt", "method.prompt_length=100"],
     "model.max_length = 48 + method.prompt_length = 100: model 'tiny-bert' takes at most 128"),
    (["data.partition=dirichlet", "data.min_partition_size=100"], "lower data.min_partition_size (100)"),
    (["fl.device=gpu"], "fl.device = 'gpu': use auto, cpu, cuda or cuda:N"),
    (["fl.precision=fp16"], "fl.precision = 'fp16': "),
    (["fl.parallel_clients=-1"], "fl.parallel_clients = -1: must be >= 0"),
]
if not torch.cuda.is_available():
    BAD.append((["fl.device=cuda"], "fl.device = 'cuda': this machine has no CUDA device; use auto or cpu"))


@pytest.mark.parametrize("override, message", BAD)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, tiny, capsys, override, message):
    out = tmp_path / "out"
    code = main(["run", *sets(tiny()), *sets(override), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fedft: error: ") and message in err and "\n" not in err, err
    assert not out.exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_wordnet_package_says_how_to_install(tmp_path, capsys, monkeypatch):
    from fedft.data import wordnet

    monkeypatch.setattr(wordnet, "DATA_NOUN", tmp_path / "absent" / "data.noun")
    monkeypatch.setattr(wordnet.load, "__defaults__", (wordnet.DATA_NOUN,))
    assert main(["run", "--set", "model.name=tiny-bert", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "sudo apt-get install wordnet-base" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_out_under_a_file_is_refused(tmp_path, tiny, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["run", *sets(tiny()), "--out", str(tmp_path / "file" / "run"), "--quiet"]) == 2
    assert "cannot create a folder under" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(tmp_path, tiny, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text("{}")
    assert main(["run", *sets(tiny()), "--out", str(out), "--quiet"]) == 2
    assert (out / "results.json").read_text() == "{}"


def test_real_process_exit_code_and_no_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "fedft.cli", "run", "--set", "method.name=nope", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0


def test_methods_table_matches_results(tmp_path, tiny, capsys):
    assert main(["methods", *sets(tiny())]) == 0
    table = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    from fedft.methods import METHODS

    assert set(table) == set(METHODS.names())  # every registered method has its row
    for method in ("bias", "lora"):
        assert main(["run", *sets(tiny(**{"method.name": method})), "--out", str(tmp_path / method), "--quiet"]) == 0
        final = json.loads((tmp_path / method / "results.json").read_text())["final"]
        assert int(table[method][1].replace(",", "")) == final["trainable_params"]
        assert int(table[method][2].replace(",", "")) == final["total_params"]
        assert float(table[method][4]) == pytest.approx(final["payload_bytes"] / 1e6, abs=1e-4)


def test_partition_prints_each_client(tiny, capsys):
    assert main(["partition", *sets(tiny(**{"data.partition": "pathological", "data.classes_per_client": 1}))]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("client")]
    assert len(lines) == 4
    for line in lines:
        counts = [int(v) for v in line.split("labels")[1].split()]
        assert sum(1 for c in counts if c) == 1


def test_config_lists_every_key(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for key in ("model.name", "data.alpha", "method.rank", "fl.eval_every", "comm.dtype"):
        assert key in out


def test_bad_input_prints_nothing_but_the_error(tmp_path, tiny, capsys):
    """No start line before the refusal: the error is the only output."""
    code = main(["run", *sets(tiny(**{"method.name": "nope"})), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and captured.err.count("\n") == 1, captured


def test_methods_of_an_image_model_use_image_data(capsys):
    assert main(["methods", "--model", "tiny-vit", "--set", "data.train_per_class=5", "--set",
                 "data.test_per_class=2", "--set", "data.image_size=28"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "lora" in out


def test_partition_needs_only_the_data_settings_and_counts_capped_examples(tiny, capsys):
    assert main(["partition", *sets(tiny(**{"data.num_clients": 2, "fl.clients_per_round": 2})),
                 "--set", "fl.clients_per_round=10", "--set", "data.shots=1"]) == 0
    out = capsys.readouterr().out
    assert "2 clients" in out and "(8 held by the clients, data.shots = 1)" in out, out
