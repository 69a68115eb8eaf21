import numpy as np
import pytest
import torch

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


def test_tokenized_in_chunks_as_arrays_equals_the_tokenizer_row_by_row(monkeypatch):
    """Each row's ids are the tokenizer's own (truncated at max_length), whatever the chunk size and whichever rows
    were used first (rows are tokenised when first batched); a batch is padded to its own longest row with the pad
    id and masks exactly the padding; rows never used are never tokenised."""
    import fedft.data
    from fedft.data import LabelledText, tokenize
    from transformers import AutoTokenizer

    from fedft.models import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    texts = ["a b c", "word " * 30, "x", "the cat sat on the mat", "b"]
    data = LabelledText(texts, np.array([0, 1, 0, 1, 1]), ["n", "y"])
    whole = tokenize(data, tok, 12)
    whole.lengths()
    monkeypatch.setattr(fedft.data, "CHUNK", 2)
    pieces = tokenize(data, tok, 12)
    pieces.batch([4, 1])
    seen = pieces.lengths([])  # tokenises nothing more
    assert seen[[0, 2, 3]].tolist() == [0, 0, 0] and (seen[[1, 4]] > 0).all()
    assert (pieces.ids[[0, 2, 3]] == pieces.pad_id).all()  # not tokenised yet
    pieces.lengths([3, 0, 2, 0])
    assert torch.equal(whole.ids, pieces.ids) and torch.equal(whole.row_lengths, pieces.row_lengths)
    _same_as_the_tokenizer(whole, texts, tok, 12)
    inputs, labels = pieces.batch([2, 0])
    assert inputs["input_ids"].shape == (2, len(tok("a b c")["input_ids"])) and labels.tolist() == [0, 0]
    assert inputs["attention_mask"].sum(1).tolist() == [len(tok("x")["input_ids"]), len(tok("a b c")["input_ids"])]
    assert (inputs["input_ids"][inputs["attention_mask"] == 0] == pieces.pad_id).all()


def _same_as_the_tokenizer(got, texts, tok, max_length):
    got.lengths()
    for i, t in enumerate(texts):
        want = tok(t, truncation=True, max_length=max_length)["input_ids"]
        assert got.ids[i, : len(want)].tolist() == want and int(got.row_lengths[i]) == len(want), t


def test_tokenized_ids_equal_the_tokenizers_for_wordpiece_bytelevel_bpe_and_backendless_tokenizers():
    """fedft calls a fast tokenizer's Rust backend directly (faster); the ids must be what the transformers call
    gives: special tokens, truncation, accents, added tokens, empty text, for a WordPiece (MiniLM), a byte-level BPE
    with a BOS/EOS template (as decoders' tokenizers are), and one without a Rust backend, which is called as is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from fedft.data import LabelledText, tokenize
    from fedft.models import minilm_path

    texts = ["Café naïve résumé", "[SEP] inside [CLS] text", "", "  spaces   everywhere  ", "word " * 30,
             "emoji \U0001F600 and 中文", "UPPER lower MiXeD", "<s> not special here </s>", "fedft is an added token"]
    data = LabelledText(texts, np.zeros(len(texts), dtype=np.int64), ["a"])
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[
        ("<s>", bpe.token_to_id("<s>")), ("</s>", bpe.token_to_id("</s>"))])
    fast_bpe = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    wordpiece = AutoTokenizer.from_pretrained(minilm_path())
    wordpiece.add_tokens(["fedft"])

    class Slow:  # a tokenizer without a Rust backend (transformers 5 keeps few): only __call__ and pad_token_id
        pad_token_id = wordpiece.pad_token_id

        def __call__(self, *a, **k):
            return wordpiece(*a, **k)

    slow = Slow()
    for tok in (wordpiece, fast_bpe, slow):
        for max_length in (6, 64):
            _same_as_the_tokenizer(tokenize(data, tok, max_length), texts, wordpiece if tok is slow else tok,
                                   max_length)
