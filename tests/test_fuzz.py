"""Hostile configs: random TOML files and --set values never produce a traceback; every rejection is a UsageError
with one line (the CLI prints it and exits 2)."""
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedft.cli import main
from fedft.config import SECTIONS, Config, load_config
from fedft.errors import UsageError

KEYS = [(s, f.name) for s, typ in SECTIONS.items() for f in dataclasses.fields(typ)]
scalars = st.one_of(st.integers(-10 ** 12, 10 ** 12), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.text(max_size=20), st.sampled_from(["fedavg", "lora", "iid", "auto", "", "-1"]))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=5), scalars, max_size=2))
keys = st.one_of(st.sampled_from(KEYS), st.tuples(st.sampled_from([*SECTIONS, "sweep", "x"]), st.text(max_size=12)))


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v > 0 else "-inf") if v in (float("inf"), float("-inf")) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in v) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_value(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def check(load) -> None:
    try:
        assert isinstance(load(), Config)
    except UsageError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(keys, values, max_size=6))
def test_random_config_files(tmp_path, entries):
    lines = {}
    for (section, key), value in entries.items():
        lines.setdefault(section, []).append(f"{toml_value(key)} = {toml_value(value)}")
    text = "\n".join(f"[{toml_value(s)}]\n" + "\n".join(body) for s, body in lines.items())
    path = tmp_path / "c.toml"
    path.write_text(text)
    check(lambda: load_config(path))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30),
                          st.builds(lambda k, v: f"{k[0]}.{k[1]}={v}", keys, st.text(max_size=15)),
                          st.builds(lambda k, v: f"{k[0]}.{k[1]}={toml_value(v)}", keys, values)), max_size=4))
def test_random_set_values(sets):
    check(lambda: load_config(None, sets))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_random_bytes_as_a_config_file(tmp_path, raw):
    path = tmp_path / "c.toml"
    path.write_bytes(raw)
    check(lambda: load_config(path))


@pytest.mark.parametrize("args", [
    ["run", "--set", "fl.rounds=0"], ["run", "--set", "fl.lr=nan"], ["run", "--set", "fl.roundz=3"],
    ["run", "--set", "nonsense"], ["partition", "--set", "data.alpha=-1"], ["sweep", "--grid", "fl.rounds="],
])
def test_cli_rejections_are_one_line_and_exit_2(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedft: error:") and "\n" not in err and "Traceback" not in err
