"""Simulating 1,000 clients costs the shared backbone once plus what each client keeps, not a model each."""
import csv
import subprocess
import sys

import numpy as np
import pytest

CHILD = """
import resource, sys
import fedft
from fedft.config import load_config
overrides = sys.argv[2:]
fedft.run(load_config(None, overrides), sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""

BOUND_MIB = 40  # 1,000 clients may cost at most this much more peak memory than 10


@pytest.fixture(scope="module")
def many_texts(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta echo foxtrot golf hotel india juliet kilo lima".split()
    path = tmp_path_factory.mktemp("data") / "many.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(4000):
            label = i % 4
            w.writerow([" ".join(rng.choice(words[3 * label: 3 * label + 3], size=4)), f"c{label}"])
    return path


def peak_mib(tmp_path, data, clients: int, mode: str) -> float:
    overrides = ["model.name=\"tiny-bert\"", f"data.name=\"csv:{data}\"", "data.partition=\"iid\"",
                 f"data.num_clients={clients}", "fl.clients_per_round=10", "fl.rounds=1", "fl.batch_size=8",
                 f"fl.mode=\"{mode}\"", "method.name=\"lora\"", "data.test_fraction=0.05"]
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / f"{mode}-{clients}"), *overrides],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1]) / 1024


@pytest.mark.parametrize("mode", ["federated", "local"])
def test_thousand_clients_cost_what_they_keep(tmp_path, many_texts, mode):
    small = peak_mib(tmp_path, many_texts, 10, mode)
    large = peak_mib(tmp_path, many_texts, 1000, mode)
    print(f"{mode}: 10 clients peak {small:.0f} MiB, 1,000 clients {large:.0f} MiB")
    assert large - small < BOUND_MIB, f"{mode}: 10 clients peak {small:.0f} MiB, 1,000 clients {large:.0f} MiB"
