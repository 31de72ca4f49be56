"""Manifest validation: what is accepted, and the one clear message for what is not."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qeval_ray.stages.read import ManifestError, open_manifest

ROWS = [
    {"id": "a", "uri": "media/a.png", "prompt": "one", "model": "g1", "quality_mos": 3.5, "extra": 1},
    {"id": "b", "uri": "/abs/b.mp4", "prompt": "two", "model": "g2", "quality_mos": 4, "extra": 2},
    {"id": "c", "uri": "s3://bucket/c.jpg", "prompt": "three", "model": None, "quality_mos": None, "extra": 3},
]


def _write(path, rows, fmt):
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        cols = list(rows[0])
        lines = [",".join(cols)] + [",".join("" if r.get(c) is None else str(r[c]) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_formats_read_alike(tmp_path, fmt):
    m = open_manifest(str(_write(tmp_path / f"m.{fmt}", ROWS, fmt)))
    assert m.num_rows == 3 and m.format in fmt
    assert m.schema.field("id").type == pa.string()
    assert m.schema.field("quality_mos").type == pa.float64()
    assert "extra" in m.schema.names  # other columns pass through
    assert m.base_dir == str(tmp_path)


def test_integer_ids_are_read_as_strings(tmp_path):
    rows = [{"id": i, "uri": f"{i}.png", "prompt": "p"} for i in range(5)]
    m = open_manifest(str(_write(tmp_path / "m.jsonl", rows, "jsonl")))
    assert m.schema.field("id").type == pa.string() and m.num_rows == 5


def test_directory_and_glob(tmp_path):
    d = tmp_path / "parts"
    d.mkdir()
    _write(d / "part-0.parquet", ROWS[:2], "parquet")
    _write(d / "part-1.parquet", ROWS[2:], "parquet")
    (d / "_SUCCESS").write_text("")
    assert open_manifest(str(d)).num_rows == 3
    assert open_manifest(str(d) + "/part-*.parquet").num_rows == 3
    assert open_manifest("file://" + str(d)).num_rows == 3


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_duplicate_ids_are_named(tmp_path, fmt):
    rows = ROWS + [dict(ROWS[0]), dict(ROWS[1]), dict(ROWS[1])]
    with pytest.raises(ManifestError, match=r"2 duplicate id\(s\): 'a' \(x2\), 'b' \(x3\)"):
        open_manifest(str(_write(tmp_path / f"m.{fmt}", rows, fmt)))


def test_duplicates_across_files(tmp_path):
    _write(tmp_path / "p0.parquet", ROWS, "parquet")
    _write(tmp_path / "p1.parquet", ROWS[:1], "parquet")
    with pytest.raises(ManifestError, match="'a'"):
        open_manifest(str(tmp_path))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_missing_required_column(tmp_path, fmt):
    rows = [{k: v for k, v in r.items() if k != "prompt"} for r in ROWS]
    with pytest.raises(ManifestError, match="no column 'prompt'"):
        open_manifest(str(_write(tmp_path / f"m.{fmt}", rows, fmt)))


def test_missing_ids(tmp_path):
    rows = ROWS + [{"id": None, "uri": "x.png", "prompt": "p"}]
    with pytest.raises(ManifestError, match=r"1 row\(s\) have no id \(the first is row 3\)"):
        open_manifest(str(_write(tmp_path / "m.parquet", rows, "parquet")))


def test_label_that_is_not_a_number(tmp_path):
    rows = [dict(r, quality_mos="great") for r in ROWS]
    with pytest.raises(ManifestError, match="column 'quality_mos', row 1 \\(id 'a'\\): 'great' is not a number"):
        open_manifest(str(_write(tmp_path / "m.parquet", rows, "parquet")))


# --- labels: one missing-label rule for every format; a bad value named by column, row and id --------

# Label cells as a user writes them, and what each must read as (None: missing).
LABEL_CELLS = [("3.5", 3.5), ("n/a", None), ("NA", None), ("", None), (" null ", None), ("None", None),
               ("NaN", None), ("4", 4.0), ("1e0", 1.0), ("N/A", None)]


def _label_rows(cells, fmt):
    rows = []
    for i, (cell, _) in enumerate(cells):
        value = cell
        if fmt == "jsonl":  # JSON: numbers as numbers, the rest as strings (a column mixing both)
            try:
                value = float(cell) if cell.strip() else cell
            except ValueError:
                pass
        rows.append({"id": f"r{i}", "uri": f"{i}.png", "prompt": "p", "quality_mos": value})
    return rows


def _read_as_ray_does(m):
    """The blocks Ray Data's readers give for the manifest (the same readers and options as
    Manifest.read), conformed by the decode stage's first step."""
    import pyarrow.csv as pacsv

    from qeval_ray.stages.read import _csv_convert, conform_manifest, read_json_table

    path = m.paths[0]
    if m.format == "csv":
        block = pacsv.read_csv(path, convert_options=_csv_convert(m.schema))
    elif m.format == "json":
        block = read_json_table(open(path, "rb").read())
    else:
        block = pq.read_table(path)
    return conform_manifest(block, m.schema)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_missing_labels_are_the_same_texts_in_every_format(tmp_path, fmt):
    m = open_manifest(str(_write(tmp_path / f"m.{fmt}", _label_rows(LABEL_CELLS, fmt), fmt)))
    assert m.schema.field("quality_mos").type == pa.float64()
    assert _read_as_ray_does(m).column("quality_mos").to_pylist() == [v for _, v in LABEL_CELLS]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
@pytest.mark.parametrize("bad", ["great", "#N/A", "4 stars", "-"])
def test_a_bad_label_is_named_by_column_row_and_id(tmp_path, fmt, bad):
    cells = [("3.5", 3.5), ("n/a", None), (bad, None), ("2", 2.0)]
    with pytest.raises(ManifestError) as e:
        open_manifest(str(_write(tmp_path / f"m.{fmt}", _label_rows(cells, fmt), fmt)))
    message = str(e.value)
    assert f"column 'quality_mos', row 3 (id 'r2'): {bad!r} is not a number" in message
    assert "missing: empty, null, or one of 'na', 'n/a', 'nan', 'null', 'none' (any case)" in message
    assert "\n" not in message and "#" not in message.replace(bad, "")  # named, not a column number


def test_a_bad_label_in_a_directory_names_its_file_and_row_there(tmp_path):
    _write(tmp_path / "p0.csv", _label_rows([("1", 1.0)] * 5, "csv"), "csv")
    rows = _label_rows([("2", 2.0), ("oops", None)], "csv")
    _write(tmp_path / "p1.csv", [dict(r, id=f"q{i}") for i, r in enumerate(rows)], "csv")
    with pytest.raises(ManifestError, match=r"column 'quality_mos', row 2 of p1.csv \(id 'q1'\): 'oops'"):
        open_manifest(str(tmp_path))


def test_a_bad_label_far_down_a_large_file_is_found(tmp_path):
    rows = _label_rows([("3", 3.0)] * 100_000 + [("3.0.1", None)], "csv")
    with pytest.raises(ManifestError, match=r"row 100001 \(id 'r100000'\): '3.0.1'"):
        open_manifest(str(_write(tmp_path / "m.csv", rows, "csv")))


def test_the_readme_states_the_missing_label_texts():
    from conftest import REPO
    from qeval_ray.contracts.schema import MISSING_LABEL_TEXTS

    readme = (REPO / "README.md").read_text()
    stated = readme.split("### Input manifest")[1].split("###")[0]
    for text in MISSING_LABEL_TEXTS:
        if text:
            assert f"`{text}`" in stated.lower(), text


def test_unreadable_missing_empty_and_mixed(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        open_manifest(str(tmp_path / "nope.parquet"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        open_manifest(str(tmp_path / "broken.parquet"))
    (tmp_path / "broken.jsonl").write_text('{"id": "a", "uri": "x", "prompt": \n')
    with pytest.raises(ManifestError, match="cannot read manifest"):
        open_manifest(str(tmp_path / "broken.jsonl"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match="no manifest files"):
        open_manifest(str(empty))
    pq.write_table(pa.Table.from_pylist(ROWS).slice(0, 0), tmp_path / "zero.parquet")
    with pytest.raises(ManifestError, match="has no rows"):
        open_manifest(str(tmp_path / "zero.parquet"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _write(mixed / "a.parquet", ROWS, "parquet")
    _write(mixed / "b.csv", ROWS, "csv")
    with pytest.raises(ManifestError, match="mixes formats"):
        open_manifest(str(mixed))


@pytest.mark.slow  # Ray
def test_reads_through_ray_with_the_validated_schema(tmp_path, ray_local):
    m = open_manifest(str(_write(tmp_path / "m.jsonl", ROWS, "jsonl")))
    table = pa.concat_tables(ray_local.get(m.read().to_arrow_refs()))
    assert table.schema.equals(m.schema)
    assert sorted(table.column("id").to_pylist()) == ["a", "b", "c"]
    # Labels through Ray's readers: the same missing texts as the driver's check, in CSV and in a
    # JSON column mixing numbers and texts (which pyarrow's JSON reader alone refuses).
    from qeval_ray.stages.read import conform_manifest

    for fmt in ("csv", "jsonl"):
        m = open_manifest(str(_write(tmp_path / f"labels.{fmt}", _label_rows(LABEL_CELLS, fmt), fmt)))
        blocks = pa.concat_tables(conform_manifest(b, m.schema) for b in ray_local.get(m.read().to_arrow_refs()))
        got = dict(zip(blocks.column("id").to_pylist(), blocks.column("quality_mos").to_pylist()))
        assert got == {f"r{i}": v for i, (_, v) in enumerate(LABEL_CELLS)}, fmt
