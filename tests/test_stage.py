"""Every stage returns each of its input rows exactly once, and says so loudly when it does not."""

import pyarrow as pa
import pytest

from qeval_ray.stage import RowAccountingError, Stage


class _Drop(Stage):
    def process(self, batch):
        return batch.slice(1)


class _Duplicate(Stage):
    def process(self, batch):
        return pa.concat_tables([batch.slice(0, 1), batch.slice(0, batch.num_rows - 1)])


class _Keep(Stage):
    def process(self, batch):
        return batch.append_column("x", pa.array(range(batch.num_rows)))


BATCH = pa.table({"id": ["a", "b", "c"], "status": ["ok"] * 3})


@pytest.mark.parametrize("stage", [_Drop(), _Duplicate()])
def test_lost_or_duplicated_rows_are_caught(stage):
    with pytest.raises(RowAccountingError):
        stage(BATCH)


def test_a_well_behaved_stage_passes():
    assert _Keep()(BATCH).column("id").to_pylist() == ["a", "b", "c"]


def test_decode_stage_keeps_every_row(tmp_path):
    from qeval_ray.decode import DecodeOptions, DecodeStage
    from qeval_ray.schema import decoded_schema

    schema = pa.schema([("id", pa.string()), ("uri", pa.string()), ("prompt", pa.string())])
    batch = pa.table({"id": ["x", "y", "z"], "uri": ["nope.png", "", "a.bin"], "prompt": ["p", "p", None]},
                     schema=schema)
    out = DecodeStage(DecodeOptions(base_dir=str(tmp_path)), decoded_schema(schema), schema)(batch)
    assert out.column("id").to_pylist() == ["x", "y", "z"]
    assert out.column("status").to_pylist() == ["fetch_error", "invalid_row", "invalid_row"]
