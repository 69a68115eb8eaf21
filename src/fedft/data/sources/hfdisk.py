"""hf:DIR: a Hugging Face datasets folder written by `save_to_disk` (a Dataset, or a DatasetDict's "train" split;
an Image feature is read as its encoded bytes)."""
from pathlib import Path

from fedft.data.sources.base import Loaded, source
from fedft.data.sources.table import READERS, loaded
from fedft.errors import UsageError


def read(path: Path, key: str) -> dict[str, list]:
    import datasets

    if not path.is_dir():
        raise UsageError(f"{key}: folder does not exist")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise UsageError(f"{key}: not a datasets folder written by save_to_disk ({str(e).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise UsageError(f"{key}: a DatasetDict without a 'train' split (splits: {', '.join(ds)}); give the "
                             f"split's own folder")
        ds = ds["train"]
    for name, feature in ds.features.items():  # images stay encoded: decoded (and checked) like any other source
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds.to_dict()


READERS["hf"] = read


@source("hf", "table", "a Hugging Face datasets folder (save_to_disk)", prefix=True)
def load(path: str, cfg) -> Loaded:
    return loaded(read, "hf", path, cfg)
