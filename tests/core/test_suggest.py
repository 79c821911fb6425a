"""Suggestions for misspelled names: the close ones, best first, never a far one."""

from __future__ import annotations

from wpipe.core.suggest import close_to, did_you_mean, listing

NAMES = ["cnn_lr1e-2/e01", "cnn_lr1e-2/e05", "cnn_lr1e-3/e05", "lstm_classifier", "sweep/bar"]


def test_the_closest_names_come_first():
    assert close_to("cnn_lr1e-2/e5", NAMES)[0] == "cnn_lr1e-2/e05"
    assert close_to("lstm_clasifier", NAMES) == ["lstm_classifier"]


def test_a_bare_file_name_finds_the_model_in_its_folder():
    assert close_to("e05", NAMES) == ["cnn_lr1e-2/e05", "cnn_lr1e-3/e05"]


def test_a_shared_prefix_alone_suggests_nothing_far():
    # `sweep/` is most of `sweep/e5`, yet `sweep/bar` is no e5
    assert close_to("sweep/e5", [*NAMES, "sweep/e05"]) == ["sweep/e05"]
    assert did_you_mean("transformer", NAMES) == ""


def test_did_you_mean_and_listing_read_as_one_line():
    assert did_you_mean("conv3", ["conv1", "conv2", "fc"]) == " (did you mean conv1 or conv2?)"
    assert listing(["a", "b"]) == "a, b"
    assert listing([f"l{i}" for i in range(25)], limit=3) == "l0, l1, l2, … and 22 more"
