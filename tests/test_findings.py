"""benchmarks/findings.py: the verdict rule (a finding needs a difference beyond twice its standard error), and
every finding's filters name real config keys, so a typo cannot leave a row "not measured yet" for ever."""
import functools
import importlib.util
import sys
from pathlib import Path

import pytest

from fedft.config import load_config
from fedft.sweep import cells, read_sweep

spec = importlib.util.spec_from_file_location("findings", Path(__file__).parents[1] / "benchmarks" / "findings.py")
findings = importlib.util.module_from_spec(spec)
sys.modules["findings"] = findings  # its dataclasses look their module up there
spec.loader.exec_module(findings)


def test_beats_needs_more_than_two_standard_errors():
    # diff 0.02, SE sqrt(2 * 0.01^2 / 3) = 0.0082: 2.45 SE, a finding
    assert findings.verdict([0.80, 0.81, 0.82], [0.78, 0.79, 0.80], "beats")[0] == "holds"
    # the same diff with three times the spread is 0.8 SE: not resolved either way
    assert findings.verdict([0.77, 0.81, 0.85], [0.75, 0.79, 0.83], "beats")[0] == "not resolved"
    assert findings.verdict([0.78, 0.79, 0.80], [0.80, 0.81, 0.82], "beats")[0] == "contradicted"


def test_keeps_up_fails_only_when_clearly_behind():
    assert findings.verdict([0.77, 0.81, 0.85], [0.79, 0.83, 0.87], "keeps_up")[0] == "holds"  # -0.02, 0.6 SE
    v, diff, se = findings.verdict([0.78, 0.79, 0.80], [0.80, 0.81, 0.82], "keeps_up")
    assert v == "contradicted" and diff == pytest.approx(-0.02) and diff < -2 * se


def test_every_filter_is_a_config_key():
    keys = set(findings.flat(load_config(None, []).to_dict()))
    for f in findings.FINDINGS:
        for k in (*f.a, *f.b):
            assert k in keys, f"{f.claim}: {k} is not a config key"


def test_a_row_with_fewer_than_three_seeds_is_not_a_verdict(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(findings, "STUDIES", tmp_path)
    f = findings.Finding("P", "lora beats bias", "", "s", {"method.name": "lora"}, {"method.name": "bias"})
    for i, (m, acc) in enumerate([("lora", 0.8), ("lora", 0.81), ("lora", 0.82), ("bias", 0.7), ("bias", 0.71)]):
        d = tmp_path / "s" / f"c{i}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"status": "completed", "config": {"method": {"name": m}},
                                                    "final": {"accuracy": acc}}))
    (tmp_path / "s" / "c9").mkdir()  # a cell still running does not count
    (tmp_path / "s" / "c9" / "results.json").write_text(json.dumps(
        {"status": "running", "config": {"method": {"name": "bias"}}, "final": {"accuracy": 0.9}}))
    assert findings.row(f)["verdict"] == "—" and "3 and 2 of 3" in findings.row(f)["fedft (A vs B)"]


@functools.cache
def study_configs(study: str) -> list[dict]:
    """The flat config of every cell of configs/<study>.toml's sweep (several findings share a study)."""
    path = str(Path(__file__).parents[1] / "configs" / f"{study}.toml")
    return [findings.flat(c.config.to_dict()) for c in cells(path, [], *read_sweep(path))]


@pytest.mark.parametrize("f", [f for f in findings.FINDINGS if f.study], ids=lambda f: f.claim)
def test_each_side_of_a_finding_is_one_variant_over_three_seeds(f):
    """Each side picks one cell per seed of its study's grid: a filter that also matched another variant (full
    fine-tuning carries method.select's default, say) would pool two methods into one mean."""
    for side in (f.a, f.b):
        seeds = [c["fl.seed"] for c in study_configs(f.study) if findings.matches(c, side)]
        assert len(seeds) == len(set(seeds)) >= 3, f"{f.claim}: {side} matches seeds {seeds}"
