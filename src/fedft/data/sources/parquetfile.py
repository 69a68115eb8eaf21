"""parquet:PATH: a Parquet file (text, or images as encoded bytes / {bytes, path} / file paths)."""
from pathlib import Path

from fedft.data.sources.base import Loaded, source
from fedft.data.sources.table import READERS, loaded
from fedft.errors import UsageError


def read(path: Path, key: str) -> dict[str, list]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UsageError(f"{key}: file does not exist")
    try:
        return pq.read_table(path).to_pydict()
    except (pa.ArrowInvalid, OSError) as e:
        raise UsageError(f"{key}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


READERS["parquet"] = read


@source("parquet", "table", "a Parquet file (text, or an image column of bytes or paths)", prefix=True)
def load(path: str, cfg) -> Loaded:
    return loaded(read, "parquet", path, cfg)
