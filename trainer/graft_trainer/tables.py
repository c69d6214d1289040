"""Manifest tables (CSV, Parquet, JSONL): one row per image, a path (or URI) column and a label column, listed
with every bad row named in one error. `data.open_source` makes a `Source` of what they list."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from graft import storage
from graft_trainer.errors import InputError

#: Manifest tables: one row per image, a path (or URI) column and a label column.
TABLE_EXTENSIONS = (".csv", ".parquet", ".jsonl")
#: How many bad rows of a manifest an error message lists (the rest are counted).
LISTED_ROWS = 10


def is_table(uri: str) -> bool:
    """Whether a data URI names a manifest table (CSV, Parquet, JSONL) rather than an ImageFolder."""
    return uri.lower().endswith(TABLE_EXTENSIONS)


def read_table(uri: str, columns: tuple[str, str]):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise InputError(uri, "manifest not found") from None
    try:
        if uri.lower().endswith(".csv"):
            # The path and label columns as text: a label "007" stays the label it is written as.
            text = pacsv.ConvertOptions(strings_can_be_null=True, column_types=dict.fromkeys(columns, pa.string()))
            return pacsv.read_csv(pa.BufferReader(data), convert_options=text)
        if uri.lower().endswith(".parquet"):
            return pq.read_table(pa.BufferReader(data))
        return pajson.read_json(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(uri, f"not a readable {uri.rsplit('.', 1)[-1].upper()} table ({exc})") from None


def _text(value) -> str | None:
    """A cell as text (None for an empty one); numbers as they print (3, not 3.0, for integer labels)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def list_table(uri: str, path_column: str, label_column: str, classes: list[str] | None
               ) -> tuple[list[str], list[int], list[str]]:
    """(classes, labels, files) of a manifest: a path column (relative to the table's folder, or absolute, or a URI)
    and a label column. Classes are the sorted labels, or `classes` (a validation or test table's labels must be
    among the training set's). Every bad row (empty label, unknown label, empty path, missing file) is named in one
    error."""
    table = read_table(uri, (path_column, label_column))
    for column, field in ((path_column, "pathColumn"), (label_column, "labelColumn")):
        if column not in table.column_names:
            raise InputError(uri, f"has no column {column!r} (its columns: {', '.join(table.column_names)}); set "
                             f"spec.data.{field}")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    paths = [_text(v) for v in table.column(path_column).to_pylist()]
    labels = [_text(v) for v in table.column(label_column).to_pylist()]
    known = set(classes) if classes is not None else None
    problems: list[str] = []
    rows: list[tuple[int, str, str]] = []
    for i, (path, label) in enumerate(zip(paths, labels, strict=True), start=1):
        if path is None:
            problems.append(f"row {i}: empty path")
        elif label is None:
            problems.append(f"row {i}: {path}: empty label")
        elif known is not None and label not in known:
            problems.append(f"row {i}: {path}: unknown label {label!r} (the training labels: "
                            f"{', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''})")
        else:
            full = path if "://" in path or path.startswith("/") else storage.join(base, path)
            rows.append((i, path, full))
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(lambda r: storage.exists(r[2]), rows))
    problems += [f"row {i}: {path}: file not found ({full})" for (i, path, full), ok in zip(rows, found, strict=True)
                 if not ok]
    if problems:
        problems.sort(key=lambda p: int(p.split(":", 1)[0][4:]))
        listed = [f"  {p}" for p in problems[:LISTED_ROWS]]
        if len(problems) > LISTED_ROWS:
            listed.append(f"  ... and {len(problems) - LISTED_ROWS} more")
        raise InputError(uri, f"{len(problems)} of {len(paths)} rows are bad:\n" + "\n".join(listed))
    if not rows:
        raise InputError(uri, "manifest has no rows")
    names = classes if classes is not None else sorted({labels[i - 1] for i, _, _ in rows})
    index = {c: k for k, c in enumerate(names)}
    order = sorted(range(len(rows)), key=lambda k: (index[labels[rows[k][0] - 1]], rows[k][2]))
    return list(names), [index[labels[rows[k][0] - 1]] for k in order], [rows[k][2] for k in order]
