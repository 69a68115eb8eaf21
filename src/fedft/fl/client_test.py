"""data.client_test_fraction: each client keeps a share of its own rows out of training, and the model is also
scored on them, client by client: "client_accuracy" (the mean over clients) and "client_accuracy_std" (their
spread), beside the global test accuracy. In local mode each client's own model is scored on its own rows.

The held-out rows are chosen in experiment.prepare (data/partition.py: hold_out); this part only scores them.
"""
from __future__ import annotations

import numpy as np

from fedft.fl.parts import part


class Rows:
    """Rows `idx` of a set of examples, batched like the whole (evaluation needs len, batch and, for text, lengths)."""

    def __init__(self, data, idx: np.ndarray) -> None:
        self.data, self.idx = data, np.asarray(idx, dtype=np.int64)
        if hasattr(data, "lengths"):
            self.lengths = lambda rows=None: data.lengths(self.idx)[self.idx]

    def __len__(self) -> int:
        return len(self.idx)

    def batch(self, i):
        return self.data.batch(self.idx[np.asarray(i, dtype=np.int64)])


def scores(task, model, train, held: list[np.ndarray], precision: str, cids=None) -> dict:
    """Accuracy of `model` on each client's held-out rows (clients `cids`, default all with rows): mean and std."""
    accs = [task.evaluate(model, Rows(train, held[c]), precision=precision)["accuracy"]
            for c in (range(len(held)) if cids is None else cids) if len(held[c])]
    if not accs:
        return {}
    return {"client_accuracy": float(np.mean(accs)), "client_accuracy_std": float(np.std(accs))}


@part(90)  # after every part that sets the evaluation (feature cache, proxy), so it wraps theirs
def client_test(b) -> None:
    held = getattr(b.exp, "client_tests", None)
    if not held:
        return
    plain, exp = b.fed.evaluate, b.exp

    def evaluate(cid=None):
        out = plain(cid)
        if "client_accuracy" in out:  # a method scored its clients' own models itself (FedSA-LoRA)
            return out
        # the training rows as clients train on them (cached features where the cache is on); a proxy run scores
        # the full model, with the trained parameters plugged in, as its global test accuracy does
        model, data = (exp.model, b.pool.data) if exp.proxy is None else (exp.server_model(), exp.train)
        out.update(scores(exp.task, model, data, held, b.pool.cfg.precision, None if cid is None else [cid]))
        return out

    b.fed.evaluate = evaluate
    b.record["client_test"] = {"fraction": exp.config.data.client_test_fraction,
                               "rows": [int(len(h)) for h in held]}
