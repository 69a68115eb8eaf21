"""fedft sweep and fedft report: the grid, resuming after a kill, the summary's numbers."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

import fedft.driver
from fedft.cli import main
from fedft.config import load_config
from fedft.sweep import cells, read_sweep


def sweep_args(tiny, out, *extra):
    return ["sweep", *[a for p in tiny() for a in ("--set", p)], "--out", str(out), *extra]


def test_sweep_resumes_after_a_kill_running_only_the_missing_cells(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sw"
    grid = ["--grid", "method.name=head,bias", "--grid", "fl.local_epochs=1,2"]
    real_run, calls = fedft.driver.run, []

    def killed_on_third(config, out_dir, **kw):
        calls.append(out_dir.name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the third cell, before it finished
        return real_run(config, out_dir, **kw)

    monkeypatch.setattr(fedft.driver, "run", killed_on_third)
    assert main(sweep_args(tiny, out, *grid)) == 130
    finished = sorted(d.name for d in out.iterdir() if (d / "results.json").is_file())
    assert len(finished) == 2 and (out / "summary.csv").is_file()  # the finished cells are summarised
    mtimes = {n: (out / n / "results.json").stat().st_mtime_ns for n in finished}

    calls.clear()
    monkeypatch.setattr(fedft.driver, "run", lambda config, out_dir, **kw: (calls.append(out_dir.name),
                                                                        real_run(config, out_dir, **kw))[1])
    assert main(sweep_args(tiny, out, *grid)) == 0
    assert len(calls) == 2 and not set(calls) & set(finished)  # only the two missing cells ran
    assert all((out / n / "results.json").stat().st_mtime_ns == t for n, t in mtimes.items())
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["method.name"] for r in rows} == {"head", "bias"}


def test_summary_mean_and_std_over_repeats(tiny, tmp_path):
    out = tmp_path / "sw"
    assert main(sweep_args(tiny, out, "--grid", "method.name=head", "--repeat", "3")) == 0
    accs = []
    for seed in range(3):
        record = json.loads((out / f"method.name-head__seed-{seed}" / "results.json").read_text())
        assert record["config"]["fl"]["seed"] == seed
        accs.append(record["final"]["accuracy"])
    with (out / "summary.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["repeats"]) == 3
    assert float(row["accuracy_mean"]) == pytest.approx(np.mean(accs), abs=1e-4)
    assert float(row["accuracy_std"]) == pytest.approx(np.std(accs, ddof=1), abs=1e-4)
    assert row["precision"] == record["precision"]["used"] and row["cpu"] == record["machine"]["cpu"]  # one machine
    from fedft.summary import load_finished, summarise  # a row whose runs differ says so

    records = load_finished([out / f"method.name-head__seed-{seed}" for seed in range(3)])
    other = "fp32" if row["precision"] == "bf16" else "bf16"
    records[1]["precision"], records[2]["machine"]["cpu"] = {"used": other}, "another CPU"
    (mixed,) = summarise(records)[1]
    assert mixed["precision"] == f"{row['precision']}; {other}" and mixed["cpu"] == f"{row['cpu']}; another CPU"
    assert {"summary.md", "curves.png", "frontier.png"} <= {p.name for p in out.iterdir()}


def test_report_rebuilds_the_summary_from_run_folders(tiny, tmp_path):
    out = tmp_path / "sw"
    assert main(sweep_args(tiny, out, "--grid", "fl.dropout=0,0.5")) == 0
    before = (out / "summary.csv").read_text()
    (out / "summary.csv").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "summary.csv").read_text() == before
    assert (out / "dropout.png").is_file()
    runs = sorted(str(d) for d in out.iterdir() if d.is_dir())
    assert main(["report", *runs, "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "summary.csv").read_text() == before


def test_sweep_file_grid_and_inf_epsilon(tiny, tmp_path, text_csv):
    cfg = tmp_path / "study.toml"
    cfg.write_text('[method]\nname = "bias"\n[dp]\nmode = "client"\n[sweep]\n'
                   'grid = { "dp.target_epsilon" = [3.0, "inf"] }\n')
    out = tmp_path / "sw"
    assert main(["sweep", str(cfg), *[a for p in tiny() for a in ("--set", p)], "--out", str(out)]) == 0
    eps = {d.name: json.loads((d / "results.json").read_text()) for d in out.iterdir() if d.is_dir()}
    dp_run = eps["dp.target_epsilon-3.0__seed-0"]
    assert dp_run["config"]["dp"]["mode"] == "client" and dp_run["final"]["epsilon"] <= 3.0
    plain = eps["dp.target_epsilon-inf__seed-0"]
    assert plain["config"]["dp"]["mode"] == "none" and "epsilon" not in plain["final"]
    assert (out / "epsilon.png").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--grid", "fl.rounds=1,0"], "fl.rounds = 0: must be >= 1"),
    (["--grid", "method.name=bias,nope"], "method.name = 'nope'"),
    (["--grid", "fl.roundz=1,2"], "unknown config key fl.roundz"),
    ([], "nothing to sweep"),
    (["--grid", "method.name=bias", "--repeat", "0"], "--repeat 0: must be >= 1"),
])
def test_bad_sweep_input_exits_2_and_writes_nothing(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "sw"
    assert main(sweep_args(tiny, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedft: error: ") and message in err and "\n" not in err, err
    assert not out.exists()


def test_sweep_refuses_to_mix_another_experiment_into_a_cell(tiny, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(sweep_args(tiny, out, "--grid", "method.name=head")) == 0
    before = (out / "method.name-head__seed-0" / "results.json").read_text()
    assert main(sweep_args(tiny, out, "--grid", "method.name=head", "--set", "fl.lr=0.5")) == 2
    assert "holds a different experiment under the same name" in capsys.readouterr().err
    assert (out / "method.name-head__seed-0" / "results.json").read_text() == before


def test_report_counts_a_run_named_twice_once(tiny, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(sweep_args(tiny, out, "--grid", "method.name=head", "--repeat", "2")) == 0
    cell = next(d for d in out.iterdir() if d.is_dir())
    capsys.readouterr()
    assert main(["report", str(cell), str(out), "--out", str(tmp_path / "rep")]) == 0
    assert capsys.readouterr().out.startswith("2 finished runs")


def test_ctrl_c_in_a_sweep_says_how_to_go_on_and_keeps_the_summary(tiny, tmp_path, monkeypatch, capsys):
    import fedft.driver

    real, calls = fedft.driver.run, []

    def second_is_interrupted(config, out_dir=None, **kw):
        calls.append(out_dir)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(config, out_dir, **kw)

    monkeypatch.setattr(fedft.driver, "run", second_is_interrupted)
    out = tmp_path / "sw"
    assert main(sweep_args(tiny, out, "--grid", "method.name=head,bias")) == 130
    err = capsys.readouterr().err
    assert "run the same fedft sweep command again" in err and "--resume" not in err
    assert (out / "summary.csv").is_file()


def test_variants_are_crossed_with_the_grid_and_repeats(tiny, tmp_path):
    """Named override sets (a baseline and its ablations) become rows of their own, each with the grid and seeds."""
    cfg = tmp_path / "study.toml"
    cfg.write_text('[sweep]\nrepeat = 2\ngrid = { "data.partition" = ["iid", "dirichlet"] }\n'
                   'variants = { probe = { "method.name" = "head" }, bitfit = { "method.name" = "bias", '
                   '"fl.lr" = 0.01 } }\n')
    out = tmp_path / "sw"
    assert main(["sweep", str(cfg), *[a for p in tiny() for a in ("--set", p)], "--out", str(out)]) == 0
    names = sorted(d.name for d in out.iterdir() if d.is_dir())
    assert names == sorted(f"{v}__data.partition-{p}__seed-{s}" for v in ("probe", "bitfit")
                           for p in ("iid", "dirichlet") for s in (0, 1))
    bitfit = json.loads((out / "bitfit__data.partition-iid__seed-1" / "results.json").read_text())["config"]
    assert bitfit["method"]["name"] == "bias" and bitfit["fl"]["lr"] == 0.01 and bitfit["fl"]["seed"] == 1
    probe = json.loads((out / "probe__data.partition-dirichlet__seed-0" / "results.json").read_text())["config"]
    assert probe["method"]["name"] == "head" and probe["data"]["partition"] == "dirichlet"
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(int(r["repeats"]) == 2 for r in rows)


@pytest.mark.parametrize("table, message", [
    ('variants = ["a"]', "[sweep] variants must be a table of name ="),
    ('variants = { a = { "method.nme" = "head" } }', "unknown config key method.nme"),
])
def test_bad_variants_exit_2(tiny, tmp_path, capsys, table, message):
    cfg = tmp_path / "study.toml"
    cfg.write_text(f"[sweep]\n{table}\n")
    out = tmp_path / "sw"
    assert main(["sweep", str(cfg), *[a for p in tiny() for a in ("--set", p)], "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("path", sorted(str(p) for p in (Path(__file__).parent.parent / "configs").glob("*.toml")),
                         ids=lambda p: Path(p).stem)
def test_every_shipped_config_and_sweep_cell_checks(path):
    """configs/*.toml are what the README and the studies run: each loads, and every cell of its sweep is a config
    that passes the checks (a renamed key or a refused combination fails here, not hours into a study)."""
    grid, repeat, variants = read_sweep(path)
    made = cells(path, [], grid, repeat, variants) if grid or variants else [load_config(path)]
    assert made


def test_workers_run_cells_side_by_side_with_the_same_results(tiny, tmp_path, capsys):
    grid = ["--grid", "method.name=head,bias", "--grid", "fl.local_epochs=1,2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(sweep_args(tiny, one, *grid)) == 0
    # one cell finished before: the workers skip it and leave it as it was
    first = "method.name-head__fl.local_epochs-1__seed-0"
    (two / first).mkdir(parents=True)
    (two / first / "results.json").write_bytes((one / first / "results.json").read_bytes())
    mtime = (two / first / "results.json").stat().st_mtime_ns
    assert main(sweep_args(tiny, two, *grid, "--workers", "2")) == 0
    assert (two / first / "results.json").stat().st_mtime_ns == mtime
    assert "done earlier, skipped" in capsys.readouterr().out
    import os

    for d in sorted(one.iterdir()):
        if not (d / "results.json").is_file():
            continue
        a, b = (json.loads((r / d.name / "results.json").read_text()) for r in (one, two))
        assert b["status"] == "completed"
        assert [r["accuracy"] for r in a["rounds"]] == [r["accuracy"] for r in b["rounds"]], d.name
        assert {k: v for k, v in a["final"].items() if k != "seconds"} == \
            {k: v for k, v in b["final"].items() if k != "seconds"}
        if d.name != first:  # each worker trains with its share of the cores
            assert b["machine"]["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    with (two / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4


def test_workers_below_one_exit_2(tiny, tmp_path, capsys):
    assert main(sweep_args(tiny, tmp_path / "sw", "--grid", "method.name=head", "--workers", "0")) == 2
    assert "--workers 0: must be >= 1" in capsys.readouterr().err and not (tmp_path / "sw").exists()


def test_sigint_to_the_main_process_stops_a_background_workers_sweep(tiny, tmp_path):
    """`nohup fedft sweep ... --workers 2 &` from a script starts with SIGINT ignored; `kill -INT` of the main process
    alone (not its process group) must still stop every cell, each keeping the rounds it finished."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sw"
    args = sweep_args(lambda: tiny(**{"fl.rounds": 200}), out, "--grid", "method.name=head,bias", "--workers", "2")
    log = tmp_path / "log"
    with log.open("w") as f:
        p = subprocess.Popen([sys.executable, "-m", "fedft.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN), start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # both cells have written a finished round
            if all(json.loads(r.read_text()).get("rounds") for r in out.glob("*/results.json")) and \
                    len(list(out.glob("*/results.json"))) == 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the cells did not start: " + log.read_text()[-2000:])
        os.kill(p.pid, signal.SIGINT)
        assert p.wait(timeout=120) == 130, log.read_text()[-2000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert "interrupted; finished runs are kept" in log.read_text()
    for r in out.glob("*/results.json"):
        record = json.loads(r.read_text())
        assert record["status"] == "interrupted" and 1 <= len(record["rounds"]) < 200
