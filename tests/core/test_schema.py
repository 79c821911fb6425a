"""The table contract: its types named without loading pyarrow, made into Arrow and DuckDB types
on use, the same types either way; its meanings true to what the readers write."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
from wpipe.core import schema
from wpipe.store import duck

COLUMNS = [(table, column) for table in schema.ALL_TABLES for column in table.columns]


def test_every_type_name_is_arrows_own_spelling_of_the_column_type():
    for table, column in COLUMNS:
        assert isinstance(column.type, pa.DataType), (table.name, column.name)
        assert str(column.type) == column.type_name, (table.name, column.name)


def test_the_arrow_types_are_those_the_contract_names():
    assert schema.MODELS.arrow_schema.field("model_id").type == pa.string()
    assert schema.MODELS.arrow_schema.field("mtime").type == pa.float64()
    assert schema.MODELS.arrow_schema.field("ingested_at").type == pa.timestamp("us", tz="UTC")
    assert schema.LAYERS.arrow_schema.field("layer_index").type == pa.int32()
    assert schema.LAYERS.arrow_schema.field("kernel_size").type == pa.list_(pa.int64())
    assert schema.LAYERS.arrow_schema.field("trainable").type == pa.bool_()
    assert schema.WEIGHT_VALUES.arrow_schema.field("value").type == pa.float32()
    assert schema.WEIGHTS.arrow_schema.field("tied_sources").type == pa.list_(pa.string())
    assert schema.UPDATES.arrow_schema.field("singular_values").type == pa.list_(pa.float64())


def test_duckdb_tables_made_from_the_contract_give_back_its_arrow_types():
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for table in schema.ALL_TABLES:
        con.execute(duck.table_ddl(table))
        got = con.sql(f"SELECT * FROM {table.name}").to_arrow_table().schema
        assert got.names == table.column_names
        for field, want in zip(got, table.arrow_schema, strict=True):
            if pa.types.is_list(want.type):  # DuckDB names a list's item field `l`
                assert pa.types.is_list(field.type), (table.name, field.name)
                assert field.type.value_type == want.type.value_type, (table.name, field.name)
            else:
                assert field.type == want.type, (table.name, field.name)


def test_the_contract_and_its_duckdb_tables_are_known_without_pyarrow():
    probe = (
        "import sys\nfrom wpipe.core import schema\nfrom wpipe.store import duck\n"
        "ddl = [duck.table_ddl(t) for t in schema.ALL_TABLES]\n"
        "names = [c.type_name for t in schema.ALL_TABLES for c in t.columns]\n"
        "print(sorted(m for m in ('pyarrow', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


READERS = Path(__file__).resolve().parents[2] / "pipeline" / "wpipe" / "readers"


def test_models_format_names_every_layout_a_reader_writes():
    # `wpipe schema` once said "h5-model (full model) or h5-weights" while ingests also wrote
    # keras-zip, tf-savedmodel, safetensors, orbax-checkpoint, ...; the readers' own constants
    # are the list (a format string literal in a reader is one of these constants)
    written = set()
    for module in READERS.glob("*.py"):
        written |= set(re.findall(r'^[A-Z0-9_]+ = "([a-z0-9]+(?:-[a-z0-9]+)+|safetensors)"$',
                                  module.read_text(), re.M))  # fmt: skip
    assert {"h5-model", "weights-h5", "keras-zip", "tf-checkpoint", "safetensors"} <= written
    models = next(t for t in schema.ALL_TABLES if t.name == "models")
    meaning = next(c.doc for c in models.columns if c.name == "format")
    named = set(re.findall(r"[a-z0-9-]+", meaning))
    assert written <= named, f"models.format does not name {sorted(written - named)}"
