import csv
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = {
    "animal": "dog cat horse bird fish lion tiger whale mouse snake".split(),
    "food": "bread apple cheese rice soup cake meat salad pasta fruit".split(),
    "place": "city river mountain valley island town coast desert forest lake".split(),
    "tool": "hammer saw drill knife wrench shovel axe needle brush ladder".split(),
}


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory):
    """A small real CSV data set: 4 classes x 40 short texts, each built from its class's words."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "texts.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for label, words in WORDS.items():
            for _ in range(40):
                w.writerow([" ".join(rng.choice(words, size=rng.integers(3, 9))), label])
    return path


@pytest.fixture(scope="session")
def server_text(tmp_path_factory):
    """The server's own unlabelled texts for FedPFT's alignment (proxy.distill_data = file:...): 200 lines in the
    clients' vocabulary, none of them a line of text_csv."""
    rng = np.random.default_rng(1)
    words = [w for ws in WORDS.values() for w in ws]
    path = tmp_path_factory.mktemp("server") / "server.txt"
    path.write_text("\n".join(f"a note on the {' and the '.join(rng.choice(words, size=2))} number {i}"
                               for i in range(200)) + "\n")
    return path


@pytest.fixture
def tiny(text_csv):
    """Overrides for a fast run: tiny BERT, the CSV data, 4 clients, 2 per round, 2 rounds."""
    def make(**extra):
        base = {
            "model.name": "tiny-bert", "data.name": f"csv:{text_csv}", "data.num_clients": 4,
            "data.partition": "iid", "fl.clients_per_round": 2, "fl.rounds": 2, "fl.batch_size": 16,
            "fl.eval_every": 1, "fl.precision": "fp32",  # the same arithmetic on every machine
        }
        base.update(extra)
        return [f"{k}={_toml(v)}" for k, v in base.items()]
    return make


def _toml(v):
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
