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
    with pytest.raises(ManifestError, match="'quality_mos' cannot be read as double"):
        open_manifest(str(_write(tmp_path / "m.parquet", rows, "parquet")))


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
