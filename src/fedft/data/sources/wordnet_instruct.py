"""wordnet-instruct: instructions about English words from the installed WordNet (Debian's wordnet-base).

Per synset (its first lemma X): "Define the word 'X'." -> its definition; "Use the word 'X' in a sentence." -> its
first example (where it has one); "Give a more general word for 'X'." -> the first lemma of its hypernym (where it has
one; any lemma of any hypernym synset is an exact match). Each row's group is the synset's lexicographer file
(noun.animal, verb.motion, adj.all, ...: 45 of them), so data.partition = "natural" makes one client of each.
Held-out synsets (data.test_per_class per file at most, and at most half of a file; a fixed split) are never in
the training data: all of a synset's rows go to one side.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedft.data.sources.base import Loaded, source
from fedft.errors import UsageError

WORDNET = Path("/usr/share/wordnet")
POS_FILES = ("noun", "verb", "adj", "adv")
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl").split()  # by lex_filenum 0..44 (WordNet's lexnames file)


def _lemma(word: str) -> str:
    return re.sub(r"\([a-z]+\)$", "", word).replace("_", " ")  # adjective markers: "big(a)"


def read_synsets(folder: Path = WORDNET) -> list[dict]:
    """Every synset of the four data files: {key, lex, lemmas, definition, examples, hypernyms}, in file order."""
    out = []
    for pos in POS_FILES:
        path = folder / f"data.{pos}"
        if not path.is_file():
            raise UsageError(f"wordnet-instruct needs Debian's wordnet-base ({path} is missing): "
                             f"sudo apt-get install wordnet-base")
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" ") or " | " not in line:  # licence header
                    continue
                head, gloss = line.split(" | ", 1)
                fields = head.split()
                n_words = int(fields[3], 16)
                lemmas = [_lemma(w) for w in fields[4: 4 + 2 * n_words: 2]]
                at = 4 + 2 * n_words
                pointers = [fields[at + 1 + 4 * k: at + 5 + 4 * k] for k in range(int(fields[at]))]
                hypernyms = [(p[2].replace("s", "a"), p[1]) for p in pointers if p[0] in ("@", "@i")]
                gloss = gloss.strip()
                examples = re.findall(r'"([^"]+)"', gloss)
                definition = gloss.split('"')[0].strip().rstrip(";").strip()
                ss = fields[2].replace("s", "a")  # satellite adjectives live in data.adj
                out.append({"key": (ss, fields[0]), "lex": int(fields[1]), "lemmas": lemmas, "definition": definition,
                            "examples": examples, "hypernyms": hypernyms})
    return out


def rows_of(synset: dict, lemmas_of: dict) -> list[tuple[str, str, list[str], str]]:
    """(prompt, response, exact-match answers, kind) of one synset."""
    x = synset["lemmas"][0]
    rows = []
    if synset["definition"]:
        rows.append((f"Define the word '{x}'.", synset["definition"], [], "define"))
    if synset["examples"]:
        rows.append((f"Use the word '{x}' in a sentence.", synset["examples"][0], [], "use"))
    hyper = [lemmas_of[h] for h in synset["hypernyms"] if h in lemmas_of]
    if hyper:
        answers = sorted({a for ls in hyper for a in ls})
        rows.append((f"Give a more general word for '{x}'.", hyper[0][0], answers, "hypernym"))
    return rows


@source("wordnet-instruct", "instruct", "WordNet instructions: define, use in a sentence, a more general word "
        "(Debian wordnet-base); natural clients: the 45 lexicographer files")
def load(_: str, cfg) -> Loaded:
    from fedft.data import Instructions, split_capped

    synsets = read_synsets()
    lemmas_of = {s["key"]: s["lemmas"] for s in synsets}
    lex = np.array([s["lex"] for s in synsets], dtype=np.int64)
    present = sorted(set(lex.tolist()))
    index = {v: i for i, v in enumerate(present)}
    classes = [LEXNAMES[v] if v < len(LEXNAMES) else f"lex{v:02d}" for v in present]
    labels = np.array([index[v] for v in lex.tolist()], dtype=np.int64)
    tr, te = split_capped(labels, cfg.test_per_class, cfg.train_per_class)  # synsets, a fixed split

    def expand(idx, shuffle: bool):
        rows = [(r, int(labels[i])) for i in idx for r in rows_of(synsets[i], lemmas_of)]
        if shuffle:  # the test rows in a fixed mixed order: the first task.generate ones span files and kinds
            rows = [rows[j] for j in np.random.default_rng(0).permutation(len(rows))]
        chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}] for (p, a, _, _), _ in rows]
        return Instructions(chats, [ans for (_, _, ans, _), _ in rows], np.array([g for _, g in rows], dtype=np.int64),
                            classes, [k for (_, _, _, k), _ in rows])

    train, test = expand(tr, False), expand(te, True)
    groups = train.labels.copy()
    return Loaded(train, test, groups, classes)
