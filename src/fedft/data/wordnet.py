"""wordnet-nouns: classify a WordNet noun gloss into its lexicographer category (Debian's wordnet-base)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from fedft.config import DataConfig
from fedft.errors import UsageError

DATA_NOUN = Path("/usr/share/wordnet/data.noun")

# WordNet's lexicographer files for nouns (lexnames 03-28), by the number in a synset's second field.
LEXNAMES = {
    3: "Tops", 4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition",
    10: "communication", 11: "event", 12: "feeling", 13: "food", 14: "group", 15: "location",
    16: "motive", 17: "object", 18: "person", 19: "phenomenon", 20: "plant", 21: "possession",
    22: "process", 23: "quantity", 24: "relation", 25: "shape", 26: "state", 27: "substance", 28: "time",
}


def read_glosses(path: Path = DATA_NOUN) -> list[tuple[str, str]]:
    """(category, gloss) for every synset in data.noun, in file order."""
    if not path.is_file():
        raise UsageError(f"WordNet glosses need Debian's wordnet-base ({path} is missing): "
                         f"sudo apt-get install wordnet-base")
    pairs = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" ") or " | " not in line:  # licence header
                continue
            head, gloss = line.split(" | ", 1)
            pairs.append((LEXNAMES.get(int(head.split()[1]), head.split()[1]), gloss.strip()))
    return pairs


def load(cfg: DataConfig, path: Path = DATA_NOUN):
    from fedft.data import LabelledText, split_capped

    pairs = read_glosses(path)
    # Deduplicate: a gloss seen more than once is dropped if its copies disagree on the category, else kept once.
    cats_of: dict[str, set[str]] = {}
    for cat, gloss in pairs:
        cats_of.setdefault(gloss, set()).add(cat)
    unique = [(next(iter(c)), g) for g, c in cats_of.items() if len(c) == 1]
    counts = Counter(cat for cat, _ in unique)
    classes = sorted(c for c, n in counts.items() if n >= cfg.min_class_size)
    if len(classes) < 2:
        raise UsageError(f"data.min_class_size = {cfg.min_class_size}: leaves {len(classes)} WordNet categories; "
                         f"at most {sorted(counts.values())[-2]} keeps two")
    index = {c: i for i, c in enumerate(classes)}
    kept = [(index[c], g) for c, g in unique if c in index]
    labels = np.array([c for c, _ in kept], dtype=np.int64)
    texts = [g for _, g in kept]
    tr, te = split_capped(labels, cfg.test_per_class, cfg.train_per_class)
    pick = lambda idx: LabelledText([texts[i] for i in idx], labels[idx], classes)  # noqa: E731
    return pick(tr), pick(te)
