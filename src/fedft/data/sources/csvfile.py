"""csv:PATH: a comma-separated file with a header row (read by pyarrow; a spreadsheet's byte-order mark is fine)."""
from pathlib import Path

from fedft.data.sources.base import Loaded, source
from fedft.data.sources.table import READERS, loaded
from fedft.errors import UsageError


def read_delimited(path: Path, key: str, delimiter: str, what: str) -> dict[str, list]:
    import pyarrow as pa
    import pyarrow.csv as pc

    if not path.is_file():
        raise UsageError(f"{key}: file does not exist")
    if path.stat().st_size == 0:
        raise UsageError(f"{key}: the file is empty")
    # Empty lines come back as empty rows (counted as dropped) instead of vanishing uncounted; a quote opened and
    # never closed ends in a parse error, not in a field that swallows the rest of the file.
    parse = pc.ParseOptions(delimiter=delimiter, ignore_empty_lines=False)
    try:
        with pc.open_csv(path, parse_options=parse) as reader:  # the header, so that every column is read as text
            names = reader.schema.names  # (no date or number guessing inside a text column)
        strings = pc.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False)
        table = pc.read_csv(path, parse_options=parse, convert_options=strings)
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0]
        if msg.startswith("CSV parse error: Expected") and ': "' in msg:
            row = msg.split(': "', 1)[1][:40]
            raise UsageError(f"{key}: a quote is opened and never closed in the row starting '\"{row}'; close it "
                             f"or remove it") from None
        raise UsageError(f"{key}: not a readable UTF-8 {what} file ({msg})") from None
    return table.to_pydict()


READERS["csv"] = lambda path, key: read_delimited(path, key, ",", "CSV")


@source("csv", "table", "a CSV file with a header row (data.text_column/image_column, label_column, client_column)",
        prefix=True)
def load(path: str, cfg) -> Loaded:
    return loaded(READERS["csv"], "csv", path, cfg)
