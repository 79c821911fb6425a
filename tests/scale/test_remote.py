"""remote: model saves on S3 (a real moto server), listed and copied through s3fs."""

from __future__ import annotations

import numpy as np
import pytest
from wpipe.ingest.driver import discover
from wpipe.readers import open_model
from wpipe.store import remote

from tests.conftest import MODELS
from tests.scale.conftest import PREFIX, python_line, upload


def test_listing_finds_the_same_saves_as_a_local_walk(s3, bucket, zoo):
    upload(s3, zoo, f"s3://{bucket}/{PREFIX}")
    listing = remote.discover([f"s3://{bucket}/{PREFIX}/"], discover)
    found = sorted(s.url.removeprefix(f"s3://{bucket}/{PREFIX}/") for s in listing.saves)
    assert found == sorted(str(p.relative_to(zoo)) for p in discover([zoo]))
    sharded = next(s for s in listing.saves if s.url.endswith(".weights.json"))
    assert len(sharded.members) == 4  # the index and its three shards
    assert sharded.size == sum(p.stat().st_size for p in (zoo / "sharded").iterdir())
    assert listing.objects == sum(1 for p in zoo.rglob("*") if p.is_file())


def test_a_single_object_and_a_save_folder_are_one_model_each(s3, bucket, zoo):
    upload(s3, zoo, f"s3://{bucket}/{PREFIX}")
    one = f"s3://{bucket}/{PREFIX}/k3_lstm.h5"
    assert [s.url for s in remote.discover([one], discover).saves] == [one]
    folder = f"s3://{bucket}/{PREFIX}/k3_conv2d_unzipped"
    [save] = remote.discover([folder], discover).saves
    assert save.url == folder and len(save.members) == 3


def test_a_fetched_copy_holds_the_objects_bytes_and_is_removed(s3, bucket, zoo):
    upload(s3, zoo, f"s3://{bucket}/{PREFIX}")
    [save] = remote.discover([f"s3://{bucket}/{PREFIX}/sharded"], discover).saves
    with remote.fetched(save) as local:
        copied = {p.name: p.read_bytes() for p in local.parent.iterdir()}
        folder = local.parent
    assert copied == {p.name: p.read_bytes() for p in (zoo / "sharded").iterdir()}
    assert not folder.exists()


def test_open_save_reads_the_weights_of_a_model_on_s3(s3, bucket):
    s3.put_file(str(MODELS / "k2_conv2d.h5"), f"{bucket}/o/m.h5")
    s3.invalidate_cache()
    url = f"s3://{bucket}/o/m.h5"
    with remote.open_save(url) as far, open_model(MODELS / "k2_conv2d.h5") as near:
        assert far.path == url or far.path.endswith("m.h5")
        pairs = [(a, b) for la, lb in zip(far.layers, near.layers, strict=True)
                 for a, b in zip(la.tensors, lb.tensors, strict=True)]  # fmt: skip
        assert pairs and all(np.array_equal(a.load(), b.load()) for a, b in pairs)


def test_a_missing_bucket_is_a_storage_error_naming_the_url(s3_endpoint):
    with pytest.raises(remote.StorageError, match=r"^s3://no-such-bucket-here/x/: "):
        remote.discover(["s3://no-such-bucket-here/x/"], discover)


def test_a_plain_http_endpoint_is_allowed_for_the_lake(s3_endpoint):
    options = remote.storage_options("s3://b/lake")
    assert options["AWS_ENDPOINT_URL"] == s3_endpoint and options["AWS_ALLOW_HTTP"] == "true"
    assert options["conditional_put"] == "etag"  # commits never rely on a rename
    assert remote.storage_options("/local/lake") == {}


@pytest.mark.parametrize(("module", "extra"), [("s3fs", "s3"), ("fsspec", "s3")])
def test_without_the_extra_an_s3_path_is_one_line_naming_the_pip_command(module, extra):
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from wpipe.store import remote; from wpipe.core import extras\n"
            "try:\n    remote.filesystem('s3://bucket/models/')\n"
            "except extras.MissingExtra as exc:\n    print(exc)\n")  # fmt: skip
    line = python_line(code)
    assert line.endswith(f"pip install 'wpipe[{extra}]'") and "s3:// paths" in line


def test_a_sharded_safetensors_export_on_s3_is_one_save_with_its_shards(s3, bucket, tmp_path):
    """The Hugging Face index is fetched for its shard names, as a Keras .weights.json."""
    source = MODELS / "safetensors" / "llama_sharded"
    upload(s3, source, f"s3://{bucket}/hf/llama_sharded")
    [save] = remote.discover([f"s3://{bucket}/hf/"], discover).saves
    assert save.url.endswith("/llama_sharded/model.safetensors.index.json")
    assert len(save.members) == 5  # the index and its four shards (config.json is beside)
    assert save.size == sum(p.stat().st_size for p in source.iterdir() if p.suffix != ".json") + (
        source / "model.safetensors.index.json").stat().st_size  # fmt: skip
