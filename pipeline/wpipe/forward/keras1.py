"""Keras 1 layer configs in Keras 2 words, so one implementation per layer serves both.

The renames are the ones Keras 2's own legacy interfaces applied when it read a Keras 1 config
(`keras@2.1.6:keras/legacy/interfaces.py`): `output_dim` -> `units`, `nb_filter` ->
`filters`, `nb_row`/`nb_col`/`filter_length` -> `kernel_size`, `subsample(_length)` ->
`strides`, `border_mode` -> `padding`, `dim_ordering` -> `data_format`, `atrous_rate` ->
`dilation_rate`, `inner_activation` -> `recurrent_activation`, `bias` -> `use_bias`,
`pool_length`/`stride` -> `pool_size`/`strides`; the `Merge` layer becomes the merge layer of
its `mode`.
"""

from __future__ import annotations

from typing import Any

CLASSES = {
    "Convolution1D": "Conv1D", "Convolution2D": "Conv2D", "Convolution3D": "Conv3D",
    "AtrousConvolution1D": "Conv1D", "AtrousConvolution2D": "Conv2D",
    "Deconvolution2D": "Conv2DTranspose", "SeparableConvolution2D": "SeparableConv2D",
}  # fmt: skip
MERGE_MODES = {"sum": "Add", "mul": "Multiply", "concat": "Concatenate", "ave": "Average",
               "max": "Maximum", "dot": "Dot"}  # fmt: skip
RENAMES = {
    "output_dim": "units", "nb_filter": "filters", "subsample": "strides",
    "subsample_length": "strides", "border_mode": "padding", "atrous_rate": "dilation_rate",
    "inner_activation": "recurrent_activation", "bias": "use_bias", "pool_length": "pool_size",
    "stride": "strides", "concat_axis": "axis", "dot_axes": "axes",
}  # fmt: skip
DATA_FORMATS = {"th": "channels_first", "tf": "channels_last"}


def is_keras1(config: dict[str, Any]) -> bool:
    return any(k in config for k in ("output_dim", "nb_filter", "border_mode", "dim_ordering",
                                     "inner_activation", "mode", "pool_length"))  # fmt: skip


def translate(class_name: str, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(Keras 2 class name, config) for a Keras 1 layer; other layers come back unchanged."""
    if not is_keras1(config) and class_name not in CLASSES and class_name != "Merge":
        return class_name, config
    gone = {"nb_row", "nb_col", "filter_length", "dim_ordering"}
    out = {RENAMES.get(k, k): v for k, v in config.items() if k not in gone}
    if "nb_row" in config:
        out["kernel_size"] = [config["nb_row"], config.get("nb_col", config["nb_row"])]
    elif "filter_length" in config:
        out["kernel_size"] = [config["filter_length"]]
    if "dim_ordering" in config:
        out["data_format"] = DATA_FORMATS.get(config["dim_ordering"], "channels_last")
    if class_name == "Merge":
        mode = config.get("mode", "sum")
        class_name = MERGE_MODES.get(mode, f"Merge(mode={mode})")
        if class_name == "Concatenate":
            out.setdefault("axis", -1)
    if class_name in ("GRU",) and "reset_after" not in out:
        out["reset_after"] = False  # Keras 1 GRU applied the reset gate before the product
    return CLASSES.get(class_name, class_name), out
