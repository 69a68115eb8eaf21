import numpy as np
import pytest

from fedft.config import DataConfig
from fedft.data import load_dataset, wordnet
from fedft.errors import UsageError

NOUN_LINES = [
    "  1 This software and database is being provided to you, the LICENSEE, by  \n",
    "00001 05 n 01 dog 0 000 | a domesticated carnivore  \n",
    "00002 05 n 01 cat 0 000 | a small feline  \n",
    "00003 13 n 01 bread 0 000 | food made from dough  \n",
    "00004 13 n 01 loaf 0 000 | a small feline  \n",  # same gloss, other category: dropped
    "00005 13 n 01 cake 0 000 | sweet baked food  \n",
    "00006 05 n 01 cow 0 000 | a farm animal  \n",
    "00007 05 n 01 cow2 0 000 | a farm animal  \n",  # duplicate, same category: kept once
    "00008 15 n 01 city 0 000 | a large town  \n",
]


def test_wordnet_parse_dedup_and_split(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text("".join(NOUN_LINES))
    cfg = DataConfig(min_class_size=2, test_per_class=1, train_per_class=5)
    train, test = wordnet.load(cfg, path)
    assert train.classes == ["animal", "food"]  # 'location' has one gloss only
    texts = sorted(train.texts + test.texts)
    assert texts == sorted(["a domesticated carnivore", "a farm animal", "food made from dough", "sweet baked food"])
    assert np.bincount(test.labels).tolist() == [1, 1]


def test_wordnet_missing_package_says_how_to_install(tmp_path):
    with pytest.raises(UsageError, match="apt-get install wordnet-base"):
        wordnet.load(DataConfig(), tmp_path / "missing")


@pytest.mark.skipif(not wordnet.DATA_NOUN.is_file(), reason="Debian wordnet-base not installed")
def test_real_wordnet_default_split_is_fixed():
    train, test = wordnet.load(DataConfig())
    assert len(train.classes) == 15
    assert len(test.labels) == 15 * 300 and np.bincount(test.labels).tolist() == [300] * 15
    assert len(train.labels) == 15 * 1000
    assert not set(train.texts) & set(test.texts)
    train2, test2 = wordnet.load(DataConfig())
    assert test2.texts == test.texts and train2.texts == train.texts


def test_csv_split_is_stratified(text_csv):
    train, test = load_dataset(DataConfig(name=f"csv:{text_csv}", test_fraction=0.25))
    assert train.classes == ["animal", "food", "place", "tool"]
    assert np.bincount(test.labels).tolist() == [10] * 4 and np.bincount(train.labels).tolist() == [30] * 4


@pytest.mark.parametrize("content, words", [
    ("a,b\n1,2\n", "no column 'label'"),
    ("text,label\nhello,x\nworld,x\n", "has a single class"),
    ("text,label\nhello,x\nworld,y\nagain,y\n", "every label needs at least 2"),
])
def test_csv_bad_files(tmp_path, content, words):
    p = tmp_path / "d.csv"
    p.write_text(content)
    with pytest.raises(UsageError, match=words):
        load_dataset(DataConfig(name=f"csv:{p}", test_fraction=0.2))
