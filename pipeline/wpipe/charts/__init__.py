"""charts stage: one function per figure, each a DuckDB query drawn as an Altair chart.

Every function takes a connection opened by `wpipe.connect()` plus a few filters and returns an
`alt.Chart` (or a layered/faceted chart). Aggregation happens in DuckDB SQL: a chart never
carries more than `base.ROW_BUDGET` data rows, whatever the number of models. Where a figure
would need more, it draws an evenly spaced subset of the models (in name order, or the order
given) and says so in its subtitle; pass `models=` to choose.

Model filters accept what the CLI accepts: a model's name, its path, or a unique model_id
prefix. Layer filters are `layer_path` values or glob patterns (`encoder/*`).

One module per family of figures (distributions, anatomy, drift, metrics, health, matrix,
filters, esd, activations, lineage, compute); the model
selection, row budget and query helpers they share are in `base`, writing files in `saving`.
Importing the package makes Altair draw in Jupyter without the internet (`notebook`).
"""

from __future__ import annotations

from collections.abc import Callable

import altair as alt

from wpipe.charts import notebook
from wpipe.charts.activations import (
    activation_histograms,
    dead_unit_heatmap,
    input_set_of,
    input_sets,
    unit_activity,
)
from wpipe.charts.anatomy import (
    GATE_TITLES,
    GRU_GATES,
    LSTM_GATES,
    conv_models,
    filter_norms,
    gate_histograms,
    param_counts,
    recurrent_layers,
)
from wpipe.charts.base import (
    DEFAULT_BINS,
    MAX_BINS,
    MAX_FACETS,
    MAX_PANELS,
    MAX_SERIES,
    ROW_BUDGET,
    NoData,
    model_ids,
)
from wpipe.charts.compute import compute_costs
from wpipe.charts.distributions import STATS, distribution_boxes, stat_heatmap, weight_histograms
from wpipe.charts.drift import (
    MAX_DISTANCE_MODELS,
    MAX_LAYERS,
    checkpoint_drift,
    distance_heatmap,
    drift_series,
    series_labels,
)
from wpipe.charts.esd import spectral_density, spectral_density_layers
from wpipe.charts.filters import filter_images
from wpipe.charts.health import HEALTH_FLAGS, flag_counts, health_overview
from wpipe.charts.lineage import update_agreement, update_sizes, update_spectrum
from wpipe.charts.matrix import weight_matrix
from wpipe.charts.metrics import MODEL_STATS, metric_scatter, metrics, rank_correlations
from wpipe.charts.saving import (
    EMBED_OPTIONS,
    SAVE_FORMATS,
    chart_html,
    javascript_bundle,
    save_chart,
    script_json,
    vega_lite_version,
)

CHARTS: dict[str, Callable[..., alt.TopLevelMixin]] = {
    "histogram": weight_histograms,
    "heatmap": stat_heatmap,
    "boxes": distribution_boxes,
    "params": param_counts,
    "compute": compute_costs,
    "gates": gate_histograms,
    "filter-norms": filter_norms,
    "drift": checkpoint_drift,
    "distance": distance_heatmap,
    "metric": metric_scatter,
    "health": health_overview,
    "act-histogram": activation_histograms,
    "dead-units": dead_unit_heatmap,
    "unit-activity": unit_activity,
    "matrix": weight_matrix,
    "filters": filter_images,
    "esd": spectral_density,
    "esd-layers": spectral_density_layers,
    "agreement": update_agreement,
    "update-sizes": update_sizes,
    "update-spectrum": update_spectrum,
}


notebook.enable()


def summary(name: str) -> str:
    """The first paragraph of a chart function's docstring, on one line."""
    return " ".join((CHARTS[name].__doc__ or "").strip().split("\n\n")[0].split())


__all__ = [
    "CHARTS",
    "DEFAULT_BINS",
    "EMBED_OPTIONS",
    "GATE_TITLES",
    "GRU_GATES",
    "HEALTH_FLAGS",
    "LSTM_GATES",
    "MAX_BINS",
    "MAX_DISTANCE_MODELS",
    "MAX_FACETS",
    "MAX_LAYERS",
    "MAX_PANELS",
    "MAX_SERIES",
    "MODEL_STATS",
    "ROW_BUDGET",
    "SAVE_FORMATS",
    "STATS",
    "NoData",
    "activation_histograms",
    "chart_html",
    "checkpoint_drift",
    "compute_costs",
    "conv_models",
    "dead_unit_heatmap",
    "distance_heatmap",
    "distribution_boxes",
    "drift_series",
    "filter_images",
    "filter_norms",
    "flag_counts",
    "gate_histograms",
    "health_overview",
    "input_set_of",
    "input_sets",
    "javascript_bundle",
    "metric_scatter",
    "metrics",
    "model_ids",
    "param_counts",
    "rank_correlations",
    "recurrent_layers",
    "save_chart",
    "script_json",
    "series_labels",
    "spectral_density",
    "spectral_density_layers",
    "stat_heatmap",
    "summary",
    "unit_activity",
    "update_agreement",
    "update_sizes",
    "update_spectrum",
    "vega_lite_version",
    "weight_histograms",
    "weight_matrix",
]
