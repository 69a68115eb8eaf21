"""Users' own data: CSV, TSV, JSON Lines, Parquet and datasets folders with mapped columns, natural clients, a given
test set, and one clear line for each kind of bad input."""
import csv
import io
import json

import numpy as np
import pytest
import torch

from fedft.cli import main
from fedft.config import DataConfig
from fedft.data import load_data
from fedft.data.partition import partition
from fedft.errors import UsageError

from conftest import WORDS
from fedft.report import read_clients

SITES = ["north", "south", "east", "west"]


def own_rows(n_per_class=24, seed=0):
    """Rows with the columns a user's export would have: sentence, category, site."""
    rng = np.random.default_rng(seed)
    return [{"sentence": " ".join(rng.choice(words, size=5)), "category": label, "site": SITES[int(rng.integers(4))]}
            for label, words in WORDS.items() for _ in range(n_per_class)]


def write_all(rows, folder):
    """The same rows as csv, tsv, jsonl, parquet and a datasets folder: {prefix: path}."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(rows[0])
    out = {}
    for prefix, sep in (("csv", ","), ("tsv", "\t")):
        p = folder / f"own.{prefix}"
        with p.open("w", newline="") as f:
            w = csv.DictWriter(f, cols, delimiter=sep)
            w.writeheader()
            w.writerows(rows)
        out[prefix] = p
    out["jsonl"] = folder / "own.jsonl"
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["parquet"] = folder / "own.parquet"
    pq.write_table(pa.Table.from_pylist(rows), out["parquet"])
    out["hf"] = folder / "own_ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(out["hf"]))
    return out


MAPPED = dict(text_column="sentence", label_column="category", client_column="site")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_all(own_rows(), tmp_path_factory.mktemp("own"))


def test_every_format_gives_the_same_examples(files):
    got = {k: load_data(DataConfig(name=f"{k}:{p}", **MAPPED)) for k, p in files.items()}
    ref = got["csv"]
    assert ref.train.classes == sorted(WORDS)
    for k, d in got.items():
        assert d.train.texts == ref.train.texts and d.test.texts == ref.test.texts, k
        assert np.array_equal(d.train.labels, ref.train.labels) and np.array_equal(d.test.labels, ref.test.labels), k
        assert d.report == {**ref.report}, k


def test_every_format_gives_a_bit_identical_run(files, tiny, tmp_path):
    import fedft
    from fedft.config import load_config

    def run(prefix):
        sets = tiny(**{"data.name": f"{prefix}:{files[prefix]}", "data.text_column": "sentence",
                       "data.label_column": "category"})
        result = fedft.run(load_config(None, sets), tmp_path / prefix)
        data = json.loads((result.out_dir / "results.json").read_text())
        rounds = [{k: v for k, v in r.items() if k != "seconds"} for r in data["rounds"]]
        final = {k: v for k, v in data["final"].items() if k != "seconds"}
        weights = (result.out_dir / "adapter" / "adapter_model.safetensors").read_bytes()
        return rounds, final, weights, data["data"]

    ref = run("csv")
    assert ref[3]["rows_used"] == 96
    for prefix in ("tsv", "jsonl", "parquet", "hf"):
        assert run(prefix) == ref, prefix


def test_natural_partition_is_the_groups_exactly(files):
    cfg = DataConfig(name=f"parquet:{files['parquet']}", partition="natural", num_clients=0, **MAPPED)
    d = load_data(cfg)
    clients = partition(d.train.labels, cfg, seed=3, groups=d.groups, group_names=d.group_names)
    assert d.group_names == sorted(SITES)
    assert len(clients) == 4
    for k, idx in enumerate(clients):
        assert sorted(idx.tolist()) == np.flatnonzero(d.groups == k).tolist()  # every row of site k, nothing else
    assert sorted(np.concatenate(clients).tolist()) == list(range(len(d.train.labels)))
    # fewer clients than the data names: that many whole sites, seeded
    few = DataConfig(name=cfg.name, partition="natural", num_clients=2, **MAPPED)
    a = partition(d.train.labels, few, seed=1, groups=d.groups, group_names=d.group_names)
    b = partition(d.train.labels, few, seed=1, groups=d.groups, group_names=d.group_names)
    assert len(a) == 2 and all(np.array_equal(x, y) for x, y in zip(a, b))
    whole = {tuple(sorted(c.tolist())) for c in clients}
    assert all(tuple(sorted(c.tolist())) in whole for c in a)


def test_integer_client_ids_group_as_their_text_does(tmp_path):
    """An integer client column takes numpy's path (fast at a million clients); it must give the clients, their
    order (by value: 2 before 10) and names that the same ids written as text give."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    users = rng.choice([10, 2, 7, 123, 0], 60).tolist()
    texts = [f"w{i % 7} w{i % 5}" for i in range(60)]
    labels = [["a", "b"][i % 2] for i in range(60)]
    got = {}
    for kind, col in (("int", users), ("text", [str(u) for u in users])):
        path = tmp_path / f"{kind}.parquet"
        pq.write_table(pa.table({"text": texts, "label": labels, "user": col}), path)
        got[kind] = load_data(DataConfig(name=f"parquet:{path}", partition="natural", client_column="user",
                                         test_fraction=0.1))
    assert got["int"].group_names == got["text"].group_names == ["0", "2", "7", "10", "123"]
    assert np.array_equal(got["int"].groups, got["text"].groups)


def test_fedft_partition_shows_each_natural_client(files, capsys):
    assert main(["partition", "--set", f'data.name="csv:{files["csv"]}"', "--set", "data.partition=\"natural\"",
                 "--set", "data.text_column=\"sentence\"", "--set", "data.label_column=\"category\"",
                 "--set", "data.client_column=\"site\"", "--set", "data.num_clients=0"]) == 0
    out = capsys.readouterr().out
    assert "4 clients, partition natural" in out
    d = load_data(DataConfig(name=f"csv:{files['csv']}", partition="natural", **MAPPED))
    for k, site in enumerate(sorted(SITES)):
        n = int((d.groups == k).sum())
        assert any(line.startswith(f"client    {k} {site}") and f": {n:>6} examples" in line
                   for line in out.splitlines()), (site, out)


def test_natural_run_uses_the_sites_as_clients(files, tiny, tmp_path, capsys):
    import fedft
    from fedft.config import load_config

    sets = tiny(**{"data.name": f"jsonl:{files['jsonl']}", "data.text_column": "sentence",
                   "data.label_column": "category", "data.client_column": "site", "data.partition": "natural",
                   "data.num_clients": 0, "fl.clients_per_round": 4})
    result = fedft.run(load_config(None, sets), tmp_path / "nat", log=print)
    data = json.loads((result.out_dir / "results.json").read_text())
    d = load_data(DataConfig(name=f"jsonl:{files['jsonl']}", partition="natural", **MAPPED))
    table = read_clients(result.out_dir)
    assert table["rows"] == [int((d.groups == k).sum()) for k in range(4)] and table["name"] == d.group_names
    assert data["clients"]["count"] == 4 and data["clients"]["max"] == max(table["rows"])
    assert "(96 rows read, 96 used)" in capsys.readouterr().out


def test_given_test_set_and_column_mapping(tmp_path):
    train_rows, test_rows = own_rows(10, seed=0), own_rows(3, seed=1)
    tr, te = write_all(train_rows, tmp_path), tmp_path / "test.jsonl"
    te.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    d = load_data(DataConfig(name=f"csv:{tr['csv']}", test=str(te), **MAPPED))
    assert d.train.texts == [r["sentence"] for r in train_rows]  # every row trains
    assert d.test.texts == [r["sentence"] for r in test_rows]
    assert [d.test.classes[i] for i in d.test.labels] == [r["category"] for r in test_rows]
    assert d.report["test"] == "data.test"


def test_integer_labels_sort_by_value_and_keep_their_values(tmp_path):
    p = tmp_path / "ints.csv"
    p.write_text("text,label\n" + "".join(f"row {i} of {c},{c}\n" for c in (0, 1, 2, 10, 11) for i in range(4)))
    d = load_data(DataConfig(name=f"csv:{p}", test_fraction=0.25))
    assert d.train.classes == ["0", "1", "2", "10", "11"]
    assert all(d.train.texts[i].endswith(f"of {d.train.classes[y]}") for i, y in enumerate(d.train.labels))


def test_byte_order_mark_blank_rows_and_dropped_rows_are_counted(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes("\ufefftext,label\n".encode("utf-8") + b"good one,pos\nbad one,neg\n\n,pos\nno label,\n"
                  + b"".join(f"more {i},{'pos' if i % 2 else 'neg'}\n".encode() for i in range(8)))
    d = load_data(DataConfig(name=f"csv:{p}", test_fraction=0.25))
    assert d.report["rows_read"] == 13 and d.report["rows_used"] == 10
    assert d.report["dropped"] == {"empty row": 1, "empty text": 1, "no label": 1}
    assert d.train.classes == ["neg", "pos"]


def test_label_case_warns_and_folds(tmp_path, capsys):
    p = tmp_path / "case.csv"
    p.write_text("text,label\n" + "".join(f"t{i},{lab}\n" for i, lab in enumerate(
        ["Positive", "positive", "POSITIVE", "negative", "negative", "Negative"] * 2)))
    kept = load_data(DataConfig(name=f"csv:{p}"))
    assert len(kept.train.classes) == 5
    assert "differ only in case" in capsys.readouterr().err
    folded = load_data(DataConfig(name=f"csv:{p}", label_case="fold"))
    assert folded.train.classes == ["negative", "positive"]


def test_images_from_a_parquet_byte_column_and_from_paths(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (12, 12), dtype=np.uint8) for _ in range(12)]
    encoded = []
    for i, a in enumerate(arrays):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        encoded.append(buf.getvalue())
        Image.fromarray(a).save(tmp_path / f"img{i}.png")
    labels = ["even" if i % 2 == 0 else "odd" for i in range(12)]
    pq.write_table(pa.table({"image": encoded, "label": labels}), tmp_path / "bytes.parquet")
    pq.write_table(pa.table({"image": [f"img{i}.png" for i in range(12)], "label": labels}), tmp_path / "paths.parquet")
    a = load_data(DataConfig(name=f"parquet:{tmp_path / 'bytes.parquet'}", test_fraction=0.25))
    b = load_data(DataConfig(name=f"parquet:{tmp_path / 'paths.parquet'}", test_fraction=0.25))
    assert a.train.images.shape == (8, 1, 12, 12) and torch.equal(a.train.images, b.train.images)
    order = [i for i in range(12)]
    assert any(torch.equal(a.train.images[0, 0], torch.from_numpy(arrays[i])) for i in order)


def test_hf_folder_with_an_image_feature(tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(8)]
    ds = datasets.Dataset.from_dict({"img": imgs, "kind": ["a", "b"] * 4},
                                    features=datasets.Features({"img": datasets.Image(), "kind": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "ds"))
    d = load_data(DataConfig(name=f"hf:{tmp_path / 'ds'}", image_column="img", label_column="kind", test_fraction=0.25))
    assert d.train.images.shape == (6, 3, 8, 8) and d.train.classes == ["a", "b"]


def test_16_bit_greyscale_is_scaled_not_clipped_and_hidden_folders_are_skipped(tmp_path):
    from PIL import Image

    for cls in ("dark", "light"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            level = 1000 * (i + 1) if cls == "dark" else 60000
            Image.fromarray(np.full((6, 6), level, dtype=np.uint16)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((6, 6), dtype=np.uint8)).save(tmp_path / ".ipynb_checkpoints" / "x.png")
    d = load_data(DataConfig(name=f"imagefolder:{tmp_path}", test_fraction=0.34))
    assert d.train.classes == ["dark", "light"]
    values = sorted({int(v) for v in torch.cat([d.train.images, d.test.images]).unique()})
    assert values == [round(1000 * k * 255 / 65535) for k in (1, 2, 3)] + [round(60000 * 255 / 65535)]


def test_image_size_mismatch_names_the_class_folder(tmp_path):
    from PIL import Image

    for cls, size in (("a", 6), ("b", 8)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.zeros((size, size), dtype=np.uint8)).save(tmp_path / cls / f"00{i}.png")
    with pytest.raises(UsageError, match=r"a/000\.png is 6x6 but b/000\.png is 8x8"):
        load_data(DataConfig(name=f"imagefolder:{tmp_path}"))


def bad(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


@pytest.mark.parametrize("make, extra, message", [
    (lambda t: bad(t, "d.csv", "sentence,category\nhi,x\nho,y\n"), {}, "no column 'label' (data.label_column); the file "
     "has columns ['sentence', 'category']"),
    (lambda t: bad(t, "d.csv", "text,label\nhi,x\nho,x\nhu,x\n"), {}, "has a single class ('x')"),
    (lambda t: bad(t, "d.csv", 'text,label\nfine,pos\n"Best 12 inch screen ever,pos\nok,neg\nbad,neg\n'), {},
     "a quote is opened and never closed in the row starting '\"Best 12 inch screen ever"),
    (lambda t: bad(t, "d.csv", ""), {}, "the file is empty"),
    (lambda t: bad(t, "d.csv", "text,label\n"), {}, "the file has no rows"),
    (lambda t: bad(t, "d.csv", b"text,label\n\xff\xfe,\x00x\n"), {}, "not a readable UTF-8 CSV file"),
    (lambda t: bad(t, "d.jsonl", '{"text": "a", "label": "x"}\n{not json\n'), {}, "not a readable JSON Lines file"),
    (lambda t: bad(t, "d.parquet", "not parquet"), {}, "not a readable Parquet file"),
    (lambda t: bad(t, "d.csv", "text,label,site\na,x,s1\nb,y,s1\nc,x,\nd,y,s2\n"),
     {"partition": "natural", "client_column": "site"}, "row 3 has no client ('site' is empty)"),
    (lambda t: bad(t, "d.csv", "text,label,site\na,x,s1\nb,y,s1\nc,x,s1\nd,y,s1\ne,x,s2\n"),
     {"partition": "natural", "client_column": "site", "test_fraction": 0.5},
     "client 's2' (site) has no training rows left"),
])
def test_bad_input_is_one_clear_error(tmp_path, make, extra, message):
    path = make(tmp_path)
    prefix = path.suffix[1:]
    with pytest.raises(UsageError) as e:
        load_data(DataConfig(name=f"{prefix}:{path}", **extra))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_bad_test_set_and_unknown_format(tmp_path, files):
    te = bad(tmp_path, "t.csv", "sentence,category\nhello,animal\nmoon,planet\n")
    with pytest.raises(UsageError, match="labels the training data lacks: 'planet'"):
        load_data(DataConfig(name=f"csv:{files['csv']}", test=str(te), **MAPPED))
    with pytest.raises(UsageError, match="unknown format"):
        load_data(DataConfig(name=f"csv:{files['csv']}", test=str(tmp_path / "t.xlsx"), **MAPPED))
    with pytest.raises(UsageError, match="unknown data set; choose one of .*csv:PATH.*hf:PATH.*parquet:PATH"):
        load_data(DataConfig(name="xlsx:/data/own.xlsx"))


def test_bad_data_on_the_command_line_exits_2_and_writes_nothing(tmp_path, tiny, capsys):
    p = bad(tmp_path, "d.csv", "sentence,category\nhi,x\nho,y\n")
    out = tmp_path / "run"
    args = ["run", *[a for s in tiny(**{"data.name": f"csv:{p}"}) for a in ("--set", s)], "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedft: error: ") and "no column 'label'" in err and "\n" not in err
    assert not out.exists()


def test_few_shot_caps_apply_to_natural_clients(files):
    cfg = DataConfig(name=f"csv:{files['csv']}", partition="natural", shots=1, **MAPPED)
    d = load_data(cfg)
    clients = partition(d.train.labels, cfg, seed=0, groups=d.groups, group_names=d.group_names)
    for k, idx in enumerate(clients):
        assert np.all(d.groups[idx] == k)  # still only the site's own rows
        assert np.bincount(d.train.labels[idx]).max() == 1  # at most one example of each class


def test_image_column_of_mixed_sizes_names_both_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    encoded = []
    for size in (8, 8, 10, 8):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((size, size), dtype=np.uint8)).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    pq.write_table(pa.table({"image": encoded, "label": ["a", "b", "a", "b"]}), tmp_path / "mixed.parquet")
    with pytest.raises(UsageError, match="images of different sizes: row 1 is 8x8 but row 3 is 10x10"):
        load_data(DataConfig(name=f"parquet:{tmp_path / 'mixed.parquet'}"))
