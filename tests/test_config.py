import pytest

from fedft.config import Config, load_config, parse_override
from fedft.errors import UsageError


def test_defaults_are_the_default_experiment():
    c = load_config()
    assert (c.model.name, c.data.name, c.data.num_clients, c.data.partition, c.data.alpha) == \
        ("minilm", "wordnet-nouns", 50, "dirichlet", 0.5)
    assert (c.fl.clients_per_round, c.method.name) == (10, "lora")


def test_overrides_are_typed():
    c = load_config(None, ["fl.lr=0.01", "fl.rounds=3", "method.targets=query,key", "method.deep=true",
                           "comm.dtype=float16"])
    assert c.fl.lr == 0.01 and c.fl.rounds == 3 and c.method.targets == ["query", "key"]
    assert c.method.deep is True and c.comm.dtype == "float16"


def test_int_given_for_float_is_accepted():
    assert load_config(None, ["data.alpha=1"]).data.alpha == 1.0


@pytest.mark.parametrize("override, words", [
    (["fl.roundz=3"], ["fl.roundz", "did you mean 'rounds'"]),
    (["flx.rounds=3"], ["unknown section", "did you mean 'fl'"]),
    (["fl.rounds=three"], ["fl.rounds", "integer"]),
    (["fl.rounds=0"], ["fl.rounds = 0", ">= 1"]),
    (["data.alpha=0"], ["data.alpha = 0.0", "> 0"]),
    (["data.alpha=-1"], ["data.alpha", "> 0"]),
    (["fl.clients_per_round=60"], ["fl.clients_per_round = 60", "data.num_clients (50)"]),
    (["data.partition=random"], ["data.partition", "iid, dirichlet, pathological"]),
    (["comm.dtype=int4"], ["comm.dtype", "float32, float16, bfloat16, int8, nf4"]),
    (["method.deep=maybe"], ["method.deep", "true or false"]),
    (["rounds=3"], ["section.key=value"]),
])
def test_bad_values_name_key_and_allowed(override, words):
    with pytest.raises(UsageError) as e:
        load_config(None, override)
    for w in words:
        assert w in str(e.value)


def test_toml_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[fl]\nrounds = 4\n[method]\nname = "bias"\n')
    c = load_config(p, ["fl.rounds=5"])
    assert c.fl.rounds == 5 and c.method.name == "bias"


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[fl\nrounds=")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(bad)


def test_round_trip_through_dict():
    c = load_config(None, ["fl.rounds=7", "method.name=bias"])
    assert Config.from_dict(c.to_dict()) == c


def test_parse_override_keeps_strings():
    assert parse_override("data.name=csv:/tmp/x.csv") == (("data", "name"), "csv:/tmp/x.csv")
