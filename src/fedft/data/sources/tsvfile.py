"""tsv:PATH: a tab-separated file with a header row."""
from fedft.data.sources.base import Loaded, source
from fedft.data.sources.csvfile import read_delimited
from fedft.data.sources.table import READERS, loaded

READERS["tsv"] = lambda path, key: read_delimited(path, key, "\t", "TSV")


@source("tsv", "table", "a tab-separated file with a header row", prefix=True)
def load(path: str, cfg) -> Loaded:
    return loaded(READERS["tsv"], "tsv", path, cfg)
