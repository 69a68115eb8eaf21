"""Classification: a linear head on the pooled backbone output, cross-entropy, accuracy."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedft.tasks.base import TASKS, Task


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The classification loss, in fp32 whatever the forward pass ran in."""
    return nn.functional.cross_entropy(logits.float(), labels, reduction=reduction)


@TASKS.register("classify")
class Classify(Task):
    name = "classify"

    @property
    def raw(self):
        from fedft.data import LabelledText
        from fedft.data.images import LabelledImages

        return (LabelledText, LabelledImages)

    def check(self, config, backbone) -> None:
        from fedft.errors import UsageError

        if getattr(backbone, "causal", False):
            raise UsageError(f"model.name = {config.model.name!r} is a causal LM: it learns instructions "
                             f"(task.name = 'instruct', with instruction data such as wordnet-instruct), not labels")

    def build(self, config, backbone, classes):
        """fedft's Classifier: a linear head on the pooled backbone states (seeded), CLIP's text-initialised head
        where asked."""
        from fedft.errors import UsageError
        from fedft.models import Classifier

        classifier = Classifier(backbone.model, len(classes), config.model.pooling, seed=config.fl.seed)
        if classifier.pooling == "pooler" and not (hasattr(backbone.model, "feature_dim")
                                                   or getattr(backbone.model, "pooler", None) is not None
                                                   or backbone.model_type == "dinov2"):
            raise UsageError(f"model.pooling = 'pooler': model {config.model.name!r} has no pooler; use mean or cls")
        if config.method.head_init == "text":
            if backbone.clip is None or backbone.tokenizer is None:
                raise UsageError(f"method.head_init = 'text' needs a CLIP model with its tokenizer; "
                                 f"model.name = {config.model.name!r} is a {backbone.model_type!r} model")
            if classifier.pooling != "pooler":
                raise UsageError(f"method.head_init = 'text' needs model.pooling = 'auto' or 'pooler' (CLIP's "
                                 f"projected image embedding), not {config.model.pooling!r}")
            from fedft.models.clip import text_head_weights

            with torch.no_grad():
                classifier.head.weight.copy_(text_head_weights(backbone.clip, backbone.tokenizer, classes))
                classifier.head.bias.zero_()
        return classifier

    def examples(self, raw, backbone, config):
        from fedft.experiment import to_examples

        return to_examples(raw, backbone, config)

    def loss(self, outputs, targets, reduction="mean"):
        return cross_entropy(outputs, targets, reduction)

    def profiles(self, train, clients):
        """Each client's share of every label in its training data (LabelShares)."""
        labels = np.asarray(train.labels.cpu() if hasattr(train.labels, "cpu") else train.labels)
        return LabelShares(clients, labels, int(labels.max()) + 1 if len(labels) else 0)

    @torch.inference_mode()
    def evaluate(self, model, data, batch_size=256, precision="fp32", profiles=None):
        """Accuracy and mean cross-entropy on `data`. Examples are batched by length to keep padding small; the
        sums stay on the model's device until the end. With `profiles` (clients' label shares) also
        "personal_accuracy": the mean over those clients of the accuracy on a test set drawn with the client's own
        label distribution (the per-class test accuracy weighted by the client's label shares), which is how a
        client holding few labels sees a model."""
        from fedft.fl.precision import autocast, lowered

        model.eval()
        device = next(model.parameters()).device
        order = np.argsort(data.lengths(), kind="stable") if hasattr(data, "lengths") else np.arange(len(data))
        correct = torch.zeros((), dtype=torch.long, device=device)
        loss = torch.zeros((), dtype=torch.float64, device=device)
        k = 0 if profiles is None else profiles.shape[1]
        right = torch.zeros(k, dtype=torch.long, device=device)  # per class: correct, and examples
        seen = torch.zeros(k, dtype=torch.long, device=device)
        with lowered(model, precision, trainable=True):  # every weight cast to bf16 once per evaluation
            for i in range(0, len(order), batch_size):
                inputs, labels = data.batch(order[i: i + batch_size])
                with autocast(device, precision):
                    logits = model(**inputs).float()
                loss += cross_entropy(logits, labels, reduction="sum")
                hit = logits.argmax(-1) == labels
                correct += hit.sum()
                if k:
                    seen += torch.bincount(labels, minlength=k)[:k]
                    right += torch.bincount(labels[hit], minlength=k)[:k]
        out = {"accuracy": int(correct) / len(order), "loss": float(loss) / len(order)}
        if k:
            out["personal_accuracy"] = personal_accuracy(right.cpu().numpy(), seen.cpu().numpy(), profiles)
        return out


def personal_accuracy(right: np.ndarray, seen: np.ndarray, profiles) -> float | None:
    """Mean over clients of sum_k share[c, k] * accuracy_k, over the classes the test set has (shares renormalised
    over them); clients without data are left out. `profiles`: a (clients, classes) array or LabelShares."""
    have = seen > 0
    acc = np.where(have, right / np.maximum(seen, 1), 0.0)
    scores = []
    for shares in profiles.chunks() if isinstance(profiles, LabelShares) else [profiles]:
        shares = shares[:, have]
        mass = shares.sum(1)
        keep = mass > 0
        scores.append((shares[keep] @ acc[have]) / mass[keep])
    scores = np.concatenate(scores)
    return float(np.mean(scores)) if len(scores) else None


class LabelShares:
    """(clients, classes): each client's share of every label in its training data, a row of zeros for a client with
    none. Made from the clients' indices when asked, CHUNK clients at a time, so a million clients never hold the
    whole matrix (a million x 20 classes would be 160 MB, and the score made two more copies of it)."""
    CHUNK = 65_536

    def __init__(self, clients, labels: np.ndarray, num_classes: int) -> None:
        from fedft.data.clients import Clients

        self.clients = clients if isinstance(clients, Clients) else Clients.of(clients)
        self.labels, self.k = labels, num_classes

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.clients), self.k

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(len(self.clients))
        return self.rows(start, stop)

    def rows(self, start: int, stop: int) -> np.ndarray:
        from fedft.data.clients import Clients
        from fedft.data.partition import label_counts

        off = self.clients.offsets
        sub = Clients(self.clients.flat[off[start]: off[stop]], off[start: stop + 1] - off[start])
        sizes = sub.sizes[:, None]
        out = np.zeros((len(sub), self.k))
        np.divide(label_counts(sub, self.labels, self.k), sizes, out=out, where=sizes > 0)
        return out

    def chunks(self):
        for start in range(0, len(self.clients), self.CHUNK):
            yield self.rows(start, min(len(self.clients), start + self.CHUNK))


CLASSIFY = Classify()
