"""The tensor-bundle reader on real tf_keras checkpoints and on crafted hostile ones."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from wpipe.readers import ModelReadError, open_model, tf_bundle

from tests.conftest import MODELS
from tests.readers import tf_write

TF = MODELS / "tf"
BUNDLES = TF / "bundles"
NAMES = ("mlp", "cnn_bn", "lstm", "bigru", "nested")


def copy_bundle(name: str, target):
    for path in BUNDLES.glob(f"k2_{name}.*"):
        if not path.name.endswith(".h5"):
            shutil.copy2(path, target / path.name)
    return target / f"k2_{name}.index"


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_of_a_real_bundle_passes_its_checksum(name):
    bundle = tf_bundle.open_bundle(BUNDLES / f"k2_{name}.index", name)
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in bundle.entries
    for key, entry in bundle.entries.items():
        bundle.verify(key)  # raises on a mismatch
        if bundle.status(key) == "ok":
            assert bundle.read(key).shape == entry.shape


def test_the_masked_crc_is_tensorflows():
    # crc32c::Mask of crc32c("") and of a known value (leveldb crc32c_test.cc: Mask/Unmask)
    assert tf_bundle.mask(0) == 0xA282EAD8
    assert tf_bundle.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_a_flipped_byte_in_a_tensor_fails_its_checksum(tmp_path):
    index = copy_bundle("mlp", tmp_path)
    bundle = tf_bundle.open_bundle(index, "m")
    key = next(k for k in bundle.entries if k.endswith("kernel/.ATTRIBUTES/VARIABLE_VALUE"))
    entry = bundle.entries[key]
    shard = bundle.shards[0]
    data = bytearray(shard.read_bytes())
    data[entry.offset + 1] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(ModelReadError) as err:
        tf_bundle.open_bundle(index, "m").read(key)
    assert err.value.code == "checksum-mismatch" and key in err.value.message


def test_a_flipped_byte_in_optimizer_state_is_found_when_the_model_is_opened(tmp_path):
    index = copy_bundle("mlp", tmp_path)
    bundle = tf_bundle.open_bundle(index, "m")
    key = next(k for k in bundle.entries if k.startswith("optimizer/_variables/"))
    data = bytearray(bundle.shards[0].read_bytes())
    data[bundle.entries[key].offset] ^= 0x01
    bundle.shards[0].write_bytes(bytes(data))
    with pytest.raises(ModelReadError) as err, open_model(index):
        pass
    assert err.value.code == "checksum-mismatch" and key in err.value.message


def test_a_flipped_byte_in_the_index_fails_its_block_checksum(tmp_path):
    index = copy_bundle("mlp", tmp_path)
    data = bytearray(index.read_bytes())
    data[20] ^= 0x04
    index.write_bytes(bytes(data))
    with pytest.raises(ModelReadError) as err:
        tf_bundle.open_bundle(index, "m")
    assert err.value.code == "checksum-mismatch"


def test_the_crafted_bundle_reads_back_its_arrays(tmp_path):
    arrays = tf_write.dense_bundle(tmp_path / "m")
    bundle = tf_bundle.open_bundle(tmp_path / "m.index", "m")
    for key, values in arrays.items():
        np.testing.assert_array_equal(bundle.read(key), values)


def lie(field: int, value):
    def edit(key, fields):
        if key.endswith("kernel/.ATTRIBUTES/VARIABLE_VALUE"):
            fields[field] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (lie(2, 10**9), "truncated"),  # offset past the shard's end
        (lie(3, 1 << 40), "oversized-tensor"),  # a terabyte tensor
        (lie(3, 8), "corrupt"),  # size that is not its shape's
        (lie(2, -5), "truncated"),  # negative offset
        (lie(4, 12345), "checksum-mismatch"),
        (lie(1, (1 << 30, 1 << 30)), "corrupt"),  # shape of 2**60 elements, size of 24 bytes
    ],
)
def test_lying_entries_are_refused_before_anything_is_read(tmp_path, edit, code):
    tf_write.dense_bundle(tmp_path / "m", edit)
    with pytest.raises(ModelReadError) as err:
        bundle = tf_bundle.open_bundle(tmp_path / "m.index", "m")
        bundle.read("layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    assert err.value.code == code


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        (lambda b: b[:30], "truncated"),
        (lambda b: b[:-8] + b"\x00" * 8, "corrupt"),  # magic number
        (lambda b: b[:-48] + tf_write.varint(0) + tf_write.varint(0) + tf_write.varint(1 << 60)
         + tf_write.varint(9) + b[-48 + 13 :], "corrupt"),  # index handle far past the end
    ],
)  # fmt: skip
def test_a_damaged_table_is_refused(tmp_path, damage, code):
    tf_write.dense_bundle(tmp_path / "m")
    index = tmp_path / "m.index"
    index.write_bytes(damage(index.read_bytes()))
    with pytest.raises(ModelReadError) as err:
        tf_bundle.open_bundle(index, "m")
    assert err.value.code == code


def test_a_snappy_block_is_named_not_guessed(tmp_path):
    index = tmp_path / "m.index"
    index.write_bytes(tf_write.table([(b"", tf_write.field(1, 1))], compression=1))
    (tmp_path / "m.data-00000-of-00001").write_bytes(b"")
    with pytest.raises(ModelReadError) as err:
        tf_bundle.open_bundle(index, "m")
    assert err.value.code == "unsupported-format" and "snappy" in err.value.message


def test_a_header_claiming_a_million_shards_is_refused(tmp_path):
    tf_write.write_bundle(tmp_path / "m", {}, None, num_shards=1_000_000)
    with pytest.raises(ModelReadError) as err:
        tf_bundle.open_bundle(tmp_path / "m.index", "m")
    assert err.value.code == "corrupt" and "shards" in err.value.message


def test_a_missing_shard_is_named(tmp_path):
    tf_write.write_bundle(tmp_path / "m", {}, None, num_shards=2)
    with pytest.raises(ModelReadError) as err:
        tf_bundle.open_bundle(tmp_path / "m.index", "m")
    assert err.value.code == "missing-member" and "data-00001-of-00002" in err.value.message


def test_expected_files_were_written_by_keras_2():
    info = json.loads((MODELS.parent / "expected" / "tf" / "k2_mlp.json").read_text())
    assert info["keras_version"].startswith("2.")


def test_a_saved_tensor_of_unknown_dimension_is_refused(tmp_path):
    tf_write.dense_bundle(tmp_path / "m", lie(1, (-1, 3)))
    with pytest.raises(ModelReadError) as err:
        tf_bundle.open_bundle(tmp_path / "m.index", "m")
    assert err.value.code == "corrupt" and "[-1, 3]" in err.value.message


def test_a_tensor_declaring_an_exabyte_is_refused_when_the_model_opens(tmp_path):
    tf_write.dense_bundle(tmp_path / "m", lie(1, (1 << 30, 1 << 30)))
    with pytest.raises(ModelReadError) as err, open_model(tmp_path / "m.index"):
        pass
    assert err.value.code == "oversized-tensor"
