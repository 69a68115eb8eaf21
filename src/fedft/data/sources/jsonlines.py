"""jsonl:PATH: JSON Lines, one object per line (read by pyarrow)."""
from pathlib import Path

from fedft.data.sources.base import Loaded, source
from fedft.data.sources.table import READERS, loaded
from fedft.errors import UsageError


def read(path: Path, key: str) -> dict[str, list]:
    import pyarrow as pa
    import pyarrow.json as pj

    if not path.is_file():
        raise UsageError(f"{key}: file does not exist")
    if path.stat().st_size == 0:
        raise UsageError(f"{key}: the file is empty")
    try:
        return pj.read_json(path).to_pydict()
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise UsageError(f"{key}: not a readable JSON Lines file ({str(e).splitlines()[0]})") from None


READERS["jsonl"] = read


@source("jsonl", "table", "JSON Lines, one object per line", prefix=True)
def load(path: str, cfg) -> Loaded:
    return loaded(read, "jsonl", path, cfg)
