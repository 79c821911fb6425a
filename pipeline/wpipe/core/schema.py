"""The table contract: every table, column, type and meaning, in one place.

Users write SQL against these names (DESIGN.md). Add columns freely; never rename or remove.
The store creates Parquet and DuckDB tables from this; `wpipe schema` prints it. The module
is longer than 600 lines because the contract is one list, read top to bottom.

A column's type is given by its Arrow name (STR is `string`, `list_of(I64)` is
`list<item: int64>`); the Arrow type itself (`Column.type`, `Table.arrow_schema`) is built on
first use, so that a reader of the database (`wpipe models`, `wpipe query`) never loads pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    type_name: str  # the Arrow type's name, as str() of it: string, double, list<item: int64>
    doc: str

    @property
    def type(self) -> pa.DataType:
        """The Arrow type (loads pyarrow)."""
        return arrow_type(self.type_name)


@dataclass(frozen=True)
class Table:
    name: str
    grain: str
    columns: tuple[Column, ...]

    # cached: the ingest asks for it per tensor, and building it costs ~30 µs
    @cached_property
    def arrow_schema(self) -> pa.Schema:
        import pyarrow

        return pyarrow.schema([pyarrow.field(c.name, c.type) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _c(name: str, type_name: str, doc: str) -> Column:
    return Column(name, type_name, doc)


STR, I64, I32, F64, F32, BOOL = "string", "int64", "int32", "double", "float", "bool"
TS = "timestamp[us, tz=UTC]"


def list_of(item: str) -> str:
    """The name of the Arrow list type of `item`s."""
    return f"list<item: {item}>"


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type of a contract type name (str() of it gives the name back)."""
    import pyarrow

    if name.startswith("list<item: "):
        return pyarrow.list_(arrow_type(name[len("list<item: ") : -1]))
    if name == TS:
        return pyarrow.timestamp("us", tz="UTC")
    return pyarrow.type_for_alias(name)


TENSOR_KEY = (
    _c("model_id", STR, "model the tensor belongs to (models.model_id)"),
    _c("layer_path", STR, "layer path, nested models joined with '/' (layers.layer_path)"),
    _c("weight_name", STR, "canonical name within the layer: kernel, forward/bias, query/kernel"),
)

MODELS = Table(
    "models",
    "model file",
    (
        _c("model_id", STR, "16 hex digits identifying the file (from its absolute path)"),
        _c(
            "name",
            STR,
            "path relative to the ingested folder without suffix; never changes "
            "(docs: model-names)",
        ),
        _c("path", STR, "absolute path of the file, one spelling a file (docs: lake)"),
        _c("sha256", STR, "SHA-256 of the file's bytes"),
        _c("file_bytes", I64, "file size in bytes"),
        _c("mtime", F64, "file modification time (seconds since the epoch) when ingested"),
        _c(
            "format",
            STR,
            "on-disk layout read: h5-model, h5-weights, h5-keras0, keras-zip, keras-dir, "
            "weights-h5, weights-sharded, tf-savedmodel, tf-checkpoint, orbax-checkpoint, "
            "safetensors, safetensors-sharded (docs: file-formats)",
        ),
        _c(
            "keras_version", STR, "Keras version the writer recorded (NULL where none: Keras 0.x/1)"
        ),
        _c("backend", STR, "backend recorded by the writer (tensorflow, jax, theano, ...)"),
        _c("model_class", STR, "Sequential, Functional, Model, ... (NULL without architecture)"),
        _c("arch_id", STR, "fingerprint of weighted layers' classes and weight shapes"),
        _c(
            "weights_sha",
            STR,
            "SHA-256 over its layers, each the set of its tensors' content_sha: equal "
            "for identical weights in any format (NULL if a tensor has no statistics)",
        ),
        _c("n_layers", I64, "leaf layers (rows in layers), weightless ones included"),
        _c("n_tensors", I64, "weight tensors (rows in weights)"),
        _c("n_params", I64, "all weight elements, as Keras count_params()"),
        _c("n_trainable", I64, "trainable elements, as Keras summary()"),
        _c("n_non_trainable", I64, "non-trainable elements: BN moving stats, frozen layers"),
        _c(
            "macs",
            I64,
            "multiply-adds of one sample's forward pass at the declared input shape "
            "(docs: compute); NULL with macs_status saying why",
        ),
        _c("macs_status", STR, "ok, or why macs is NULL (no architecture, input shape unknown…)"),
        _c("n_optimizer_tensors", I64, "optimizer state tensors stored in the file"),
        _c("n_optimizer_params", I64, "optimizer state elements stored in the file"),
        _c("optimizer", STR, "optimizer class from the training config (NULL if none)"),
        _c("loss", STR, "loss from the training config (text or JSON)"),
        _c("model_config", STR, "architecture JSON, verbatim"),
        _c("training_config", STR, "training config JSON, verbatim"),
        _c("ingested_at", TS, "when this file was ingested"),
        _c("ingest_options", STR, "options the rows were computed with; changing one re-reads"),
        _c(
            "source_config",
            STR,
            "a Hugging Face config.json beside a weights-only file, verbatim (model_type, "
            "sizes); NULL if none (docs: file-formats)",
        ),
    ),
)

LAYERS = Table(
    "layers",
    "leaf layer (layers of nested models get a path such as encoder/dense_1)",
    (
        _c("model_id", STR, "models.model_id"),
        _c("layer_index", I32, "position among the model's leaf layers, from 0"),
        _c("layer_path", STR, "unique path of the layer in the model"),
        _c("layer_name", STR, "the layer's own name"),
        _c("class_name", STR, "Keras class (NULL when the file has no architecture)"),
        _c("trainable", BOOL, "the layer and every enclosing model are trainable"),
        _c("n_params", I64, "weight elements in the layer (Keras count_params())"),
        _c("n_trainable", I64, "trainable weight elements in the layer"),
        _c("n_tensors", I32, "weight tensors in the layer"),
        _c("activation", STR, "activation from the config (wrapped layer's for wrappers)"),
        _c("units", I64, "units / output_dim from the config"),
        _c("filters", I64, "filters / nb_filter from the config"),
        _c("kernel_size", list_of(I64), "kernel size from the config"),
        _c("config", STR, "the layer's config as JSON text"),
        _c("output_shape", list_of(I64), "one sample's output shape (first output, first call)"),
        _c("macs", I64, "multiply-adds per sample, every call (0: elementwise or lookup)"),
        _c("output_bytes", I64, "float32 bytes of one sample's outputs, every call"),
    ),
)

# Statistics shared by `weights` and `activations` (analysis.tensor_stats: one definition).
CENTRE = (
    _c("mean", F64, "arithmetic mean"),
    _c("std", F64, "population standard deviation (divides by n)"),
    _c("min", F64, "smallest value"),
    _c("max", F64, "largest value"),
)
TAIL = (
    _c("nan_count", I64, "NaN elements (excluded from every other statistic)"),
    _c("inf_count", I64, "+/-inf elements (excluded from every other statistic)"),
    _c("p01", F64, "1st percentile (linear interpolation, as numpy.percentile)"),
    _c("p05", F64, "5th percentile"),
    _c("p25", F64, "25th percentile"),
    _c("p50", F64, "median"),
    _c("p75", F64, "75th percentile"),
    _c("p95", F64, "95th percentile"),
    _c("p99", F64, "99th percentile"),
    _c("skew", F64, "Fisher-Pearson skewness m3/m2^1.5 (biased; NULL if constant)"),
    _c("kurtosis", F64, "excess kurtosis m4/m2^2 - 3 (biased; NULL if constant)"),
)
HISTOGRAM_BIN = (
    _c("bin", I32, "bin number from 0"),
    _c("lo", F64, "lower edge (inclusive)"),
    _c("hi", F64, "upper edge (exclusive; inclusive for the last bin)"),
    _c("count", I64, "finite elements in the bin"),
)

WEIGHTS = Table(
    "weights",
    "weight tensor; statistics in float64 over finite values (docs: statistics)",
    (
        *TENSOR_KEY,
        _c("weight_index", I32, "position of the tensor in the model's saved order, from 0"),
        _c("role", STR, "kernel, recurrent_kernel, bias, gamma, beta, moving_mean, ..."),
        _c("trainable", BOOL, "counted as trainable by Keras"),
        _c("dtype", STR, "stored dtype (bfloat16 is decoded to float32 for analysis)"),
        _c("shape", list_of(I64), "tensor shape"),
        _c("size", I64, "number of elements"),
        _c("source_name", STR, "where the tensor lives in the file, verbatim"),
        _c(
            "content_sha",
            STR,
            "SHA-256 of dtype, shape and values (little-endian, C order): equal for equal "
            "tensors whatever the file, format or name",
        ),
        _c(
            "layout",
            STR,
            "keras; theano (Keras 1 'th' conv kernel); cudnn (CuDNNLSTM/GRU); "
            "out_in (PyTorch's (out, in, *k) weight in a safetensors export)",
        ),
        _c(
            "status",
            STR,
            "ok, or '<reason>: …' for a tensor kept without statistics "
            "(complex, string, enum or compound dtype; never written)",
        ),
        *CENTRE,
        _c("abs_mean", F64, "mean of |w|"),
        _c("l1", F64, "sum of |w|"),
        _c("l2", F64, "Euclidean (Frobenius) norm, sqrt(sum w^2)"),
        _c("max_abs", F64, "largest |w|"),
        _c("zero_count", I64, "elements exactly 0"),
        _c("near_zero_frac", F64, "fraction of elements with |w| < near_zero_threshold"),
        _c("near_zero_threshold", F64, "threshold used for near_zero_frac (--near-zero)"),
        *TAIL,
        _c(
            "quantization",
            STR,
            "Keras quantization mode of the layer (int8, int4, float8, gptq, awq; NULL if none); "
            "a quantized kernel's statistics are of its dequantized values (docs: file-formats)",
        ),
        _c(
            "tied_sources",
            list_of(STR),
            "other places the file lists this same variable (a weight tied across layers, "
            "e.g. T5's shared embedding under encoder and decoder): counted once, here; "
            "NULL if none (docs: file-formats)",
        ),
    ),
)

HISTOGRAMS = Table(
    "histograms",
    "histogram bin of a tensor: equal-width bins over [min, max], as numpy.histogram",
    (
        *TENSOR_KEY,
        *HISTOGRAM_BIN,
    ),
)

WEIGHT_VALUES = Table(
    "weight_values",
    "single weight value (--values: auto by default, all, sample:N or none)",
    (
        *TENSOR_KEY,
        _c("flat_index", I64, "index in the C-order flattened tensor"),
        _c("value", F32, "the value as float32 (exact for float32/float16/bfloat16 tensors)"),
    ),
)

PAIR_KEY = (
    _c("model_a", STR, "model_id of the earlier / reference model"),
    _c("model_b", STR, "model_id of the later / compared model"),
)

DRIFT = Table(
    "drift",
    "tensor of two same-architecture models: a checkpoint series' consecutive pair "
    "(`wpipe compare` computes its pairs on demand and stores them nowhere)",
    (
        *PAIR_KEY,
        _c("layer_path", STR, "B's layer path (A's is the layer align_layers pairs with it)"),
        _c("weight_name", STR, "B's weight name (A's tensor is in the same place of A's layer)"),
        _c("size", I64, "elements in the tensor"),
        _c("rel_l2", F64, "relative change ||B-A|| / ||A|| (NULL when ||A|| = 0)"),
        _c("cosine", F64, "cosine similarity A.B / (||A|| ||B||)"),
        _c("mean_abs_change", F64, "mean |B-A|"),
        _c("sign_flip_frac", F64, "fraction of elements whose sign flips (A*B < 0)"),
        _c("max_abs_change", F64, "max |B-A|"),
        _c("l2_a", F64, "||A||"),
        _c("l2_b", F64, "||B||"),
        _c("l2_diff", F64, "||B-A||"),
        _c(
            "series", STR, "the series (folder) of the pair (NULL: an older wpipe's on-demand pair)"
        ),
        _c("sha256_a", STR, "content hash of A's file when computed (stale rows are replaced)"),
        _c("sha256_b", STR, "content hash of B's file when computed"),
    ),
)

MODEL_TAGS = Table(
    "model_tags",
    "hyperparameter parsed from a model's folder and file names (docs: comparing)",
    (
        _c("model_id", STR, "models.model_id"),
        _c("key", STR, "tag name: lr, dropout, l2, epoch, step, ..."),
        _c("value", F64, "tag value"),
    ),
)

MODEL_METRICS = Table(
    "model_metrics",
    "user-supplied result of a model (validation accuracy, loss, ...), long form",
    (
        _c("model_id", STR, "models.model_id"),
        _c("metric", STR, "metric name (a CSV column)"),
        _c("value", F64, "metric value"),
        _c("source", STR, "file the value came from"),
    ),
)

UNITS = Table(
    "units",
    "slice of a weight tensor along its meaningful axis (docs: anatomy)",
    (
        *TENSOR_KEY,
        _c("role", STR, "weights.role of the tensor"),
        _c("axis", STR, "unit, filter, channel, gate (a whole gate block) or head"),
        _c("index", I64, "slice index along the axis (unit within its gate for gated layers)"),
        _c("gate", STR, "i, f, c, o (LSTM, ConvLSTM); z, r, h (GRU); NULL elsewhere"),
        _c("direction", STR, "forward / backward inside Bidirectional; NULL elsewhere"),
        _c("part", STR, "input / recurrent half of a GRU reset_after or cuDNN bias"),
        _c("size", I64, "elements in the slice (a unit's incoming weights)"),
        _c("mean", F64, "mean of the slice"),
        _c("std", F64, "population standard deviation of the slice"),
        _c("l2", F64, "Euclidean norm of the slice"),
        _c("max_abs", F64, "largest |w| in the slice"),
        _c("zero_frac", F64, "fraction of elements exactly 0"),
        _c("near_zero_frac", F64, "fraction with |w| < weights.near_zero_threshold"),
    ),
)

SPECTRA = Table(
    "spectra",
    "matrix of a weight tensor: its eigenvalue spectrum's metrics, WeightWatcher-compatible "
    "(docs: spectral); every tensor has at least one row, skipped ones with the reason",
    (
        *TENSOR_KEY,
        _c("matrix", STR, "full (whole tensor), pooled (conv slices), gate:i, filters, slice:i,j"),
        _c("N", I64, "larger dimension of the matrix (of each slice when pooled)"),
        _c("M", I64, "smaller dimension: eigenvalues per matrix"),
        _c("rf", I64, "matrices pooled into this ESD (conv kernel positions kh·kw; else 1)"),
        _c("rescale", F64, "eigenvalue factor: 0.5 pooled conv (W/√2), rf/2 per slice, else 1"),
        _c("num_evals", I64, "eigenvalues in the ESD, M·rf (zeros included)"),
        _c("lambda_max", F64, "largest eigenvalue λmax = σmax² (after rescale)"),
        _c("spectral_norm", F64, "WeightWatcher's spectral_norm: λmax (the squared operator norm)"),
        _c("log_spectral_norm", F64, "log10 λmax"),
        _c("norm", F64, "Σ λ = squared Frobenius norm ||W||_F² (after rescale)"),
        _c("log_norm", F64, "log10 Σ λ"),
        _c("stable_rank", F64, "Σ λ / λmax"),
        _c("entropy", F64, "-Σ p ln p / ln R, p = λ/Σλ, R = numerical rank (WeightWatcher)"),
        _c("alpha", F64, "power-law exponent of the ESD tail (continuous MLE)"),
        _c("xmin", F64, "start of the fitted tail: the candidate of least KS distance"),
        _c("D", F64, "Kolmogorov-Smirnov distance of the fit"),
        _c("sigma", F64, "standard error of alpha, (alpha - 1) / sqrt(tail size)"),
        _c("num_pl_spikes", I64, "eigenvalues >= xmin (the fitted tail)"),
        _c("alpha_weighted", F64, "alpha · log10 λmax"),
        _c("log_alpha_norm", F64, "log10 Σ λ^alpha"),
        _c("warning", STR, "over-trained (alpha < 2), under-trained (alpha > 6), else NULL"),
        _c(
            "status",
            STR,
            "ok, or 'skipped: <reason>' (the columns that could be computed are; "
            "numpy's overflow warnings and a solver that does not converge are reasons too)",
        ),
        _c("method_version", STR, "version of the definitions that produced the row"),
    ),
)

EIGENVALUES = Table(
    "eigenvalues",
    "eigenvalue of a matrix in spectra (its ESD, after rescale), largest first",
    (
        *TENSOR_KEY,
        _c("matrix", STR, "spectra.matrix"),
        _c("k", I64, "rank from 0 (the largest eigenvalue, lambda_max)"),
        _c("value", F64, "the eigenvalue: a squared singular value of W (no 1/N scaling)"),
    ),
)

WEIGHT_TILES = Table(
    "weight_tiles",
    "cell of a tensor viewed as a matrix (leading axes × last axis): one weight, or the "
    "mean of a block when the tensor has more elements than its share of the model's cell "
    "budget (docs: values; at most 32 × 32 cells, a model's first 4-D kernel whole up to "
    "16,384 weights); tensors of 2 or more dimensions, whatever --values kept",
    (
        *TENSOR_KEY,
        _c("rows", I64, "rows of the matrix view: the product of all axes but the last"),
        _c("cols", I64, "columns of the matrix view: the last axis (units, filters, G·u)"),
        _c("tile_row", I32, "cell row from 0"),
        _c("tile_col", I32, "cell column from 0"),
        _c("row_start", I32, "first matrix row of the cell"),
        _c("row_end", I32, "one past the last matrix row of the cell"),
        _c("col_start", I32, "first matrix column of the cell"),
        _c("col_end", I32, "one past the last matrix column of the cell"),
        _c("mean", F64, "mean of the cell's finite values (NULL if none)"),
        _c(
            "peak",
            F64,
            "the cell's value of largest magnitude, signed (max-|w| pooling); NULL for a cell "
            "of one weight (its mean)",
        ),
    ),
)

ACTIVATION_KEY = (
    _c("model_id", STR, "models.model_id"),
    _c(
        "input_set",
        STR,
        "16 hex digits: SHA-256 of the input arrays (names, dtypes, shapes, bytes)",
    ),
    _c(
        "layer_path",
        STR,
        "layer path (nested models joined with '/'; a nested model's own output too)",
    ),
    _c("call_index", I32, "which call of the layer: a shared layer has several, from 0"),
    _c("output_index", I32, "which output of that call (LSTM return_state: 0 output, 1 h, 2 c)"),
)

ACTIVATION_RUNS = Table(
    "activation_runs",
    "forward pass of a model on an input set (docs: layer-outputs)",
    (
        _c("model_id", STR, "models.model_id"),
        _c("input_set", STR, "activations.input_set"),
        _c("input_name", STR, "the input set's name (--name; default the input file's name)"),
        _c("source", STR, "file (user data) or random (seeded probe inputs, not data)"),
        _c("input_path", STR, "the input file (NULL for random inputs)"),
        _c("n_samples", I64, "samples in the input set"),
        _c("sha256", STR, "models.sha256 when computed (a changed file is computed again)"),
        _c("status", STR, "complete, stopped (a layer could not be computed) or failed"),
        _c("reason", STR, "why the pass stopped or failed (NULL when complete)"),
        _c("n_outputs", I64, "layer outputs computed (rows in activations)"),
        _c("computed_at", TS, "when the pass ran"),
    ),
)

ACTIVATIONS = Table(
    "activations",
    "layer output on an input set: statistics over samples × positions × units, with the "
    "definitions of `weights`",
    (
        *ACTIVATION_KEY,
        _c("class_name", STR, "Keras class of the layer"),
        _c("shape", list_of(I64), "output shape, samples first"),
        _c("size", I64, "number of elements"),
        *CENTRE,
        _c("abs_mean", F64, "mean of |a|"),
        _c("zero_frac", F64, "fraction of elements exactly 0 (ReLU's silent outputs)"),
        _c("near_zero_frac", F64, "fraction with |a| < near_zero_threshold"),
        _c("near_zero_threshold", F64, "threshold used for near_zero_frac"),
        *TAIL,
        _c(
            "n_units", I64, "units/channels of the output (its last axis; axis 1 if channels_first)"
        ),
        _c("dead_units", I64, "units never above 0 on the input set (activation_units.dead)"),
    ),
)

ACTIVATION_HISTOGRAMS = Table(
    "activation_histograms",
    "histogram bin of a layer output: equal-width bins over [min, max], as numpy.histogram",
    (
        *ACTIVATION_KEY,
        *HISTOGRAM_BIN,
    ),
)

ACTIVATION_UNITS = Table(
    "activation_units",
    "unit (channel) of a layer output on an input set",
    (
        *ACTIVATION_KEY,
        _c("unit", I64, "index along the unit axis"),
        _c("mean", F64, "mean over samples × positions"),
        _c("max", F64, "largest value over samples × positions"),
        _c(
            "active_frac",
            F64,
            "fraction of samples × positions with output > 0 (above the subnormal float32 "
            "range, which TensorFlow flushes to 0)",
        ),
        _c("dead", BOOL, "never active (every output finite and ≤ 0) on the input set"),
        _c(
            "saturated_frac",
            F64,
            "fraction of samples × positions on a rail of the layer's bounded activation "
            "(tanh, softsign: |a| > 0.99; sigmoid, hard_sigmoid: |2a − 1| > 0.99); NULL for "
            "other layers, recurrent layers and the model's outputs",
        ),
    ),
)

ACTIVATION_STATUS = Table(
    "activation_status",
    "layer whose output could not be computed (the pass stops there), with the reason",
    (
        _c("model_id", STR, "models.model_id"),
        _c("input_set", STR, "activations.input_set"),
        _c("layer_path", STR, "the layer (NULL when the whole model could not be run)"),
        _c("class_name", STR, "its Keras class"),
        _c("status", STR, "stopped or failed"),
        _c("reason", STR, "e.g. 'Lambda: code stored in the file is never run'"),
    ),
)

INGEST_ERRORS = Table(
    "ingest_errors",
    "file that could not be read",
    (
        _c("path", STR, "absolute path of the file, one spelling a file (docs: lake)"),
        _c("error", STR, "short reason code: empty-file, not-hdf5, truncated, not-keras, ..."),
        _c("message", STR, "one line naming the file and the reason"),
        _c("at", TS, "when the failure was recorded"),
        _c("file_bytes", I64, "file size when it failed (an unchanged file is not retried)"),
        _c("mtime", F64, "file modification time when it failed"),
    ),
)

MODEL_NAMES = Table(
    "model_names",
    "model: the name it was given when first ingested (docs: model-names)",
    (
        _c("model_id", STR, "models.model_id"),
        _c("name", STR, "the model's name (models.name is set from it)"),
        _c("path", STR, "models.path when the name was given"),
        _c("named_at", TS, "when the name was given"),
    ),
)

LINEAGE = Table(
    "lineage",
    "model whose base the user named (`wpipe lineage set CHILD BASE`; docs: lineage)",
    (
        _c("child_id", STR, "models.model_id of the fine-tune"),
        _c("base_id", STR, "models.model_id of the model it was tuned from"),
        _c("source", STR, "user (lineage set) or suggested (accepted from lineage_suggestions)"),
        _c("sha256_child", STR, "the child's file hash when its updates were computed"),
        _c("sha256_base", STR, "the base's file hash when the updates were computed"),
        _c("set_at", TS, "when the base was named"),
    ),
)

UPDATES = Table(
    "updates",
    "tensor of a fine-tune against its base's: the update τ = W_child − W_base",
    (
        _c("child_id", STR, "lineage.child_id"),
        _c("base_id", STR, "lineage.base_id"),
        _c("layer_path", STR, "the child's layer (paired with the base's by align_layers)"),
        _c("weight_name", STR, "weight name (the same in both)"),
        _c("base_layer_path", STR, "the base's layer"),
        _c("size", I64, "elements"),
        _c("base_l2", F64, "‖W_base‖"),
        _c("update_l2", F64, "‖τ‖"),
        _c("rel_update", F64, "‖τ‖ / ‖W_base‖ (NULL for a zero base)"),
        _c("untouched", BOOL, "τ = 0: the tensor was frozen or not trained"),
        _c("max_abs_update", F64, "max |τ|"),
        _c("rank", I64, "numerical rank of τ as a matrix (singular values above float32 noise)"),
        _c("effective_rank", F64, "exp(entropy of σ/Σσ) of τ as a matrix (Roy & Vetterli)"),
        _c("top1_share", F64, "share of ‖τ‖² in τ's largest singular value"),
        _c("top8_share", F64, "share of ‖τ‖² in τ's 8 largest singular values"),
        _c("singular_values", list_of(F64), "τ's 64 largest singular values (NULL: too large)"),
    ),
)

UPDATE_PAIRS = Table(
    "update_pairs",
    "tensor of two fine-tunes of one base: how their updates agree",
    (
        _c("base_id", STR, "the common base"),
        _c("child_a", STR, "one child (the smaller model_id)"),
        _c("child_b", STR, "the other child"),
        _c("base_layer_path", STR, "the base's layer"),
        _c("weight_name", STR, "weight name"),
        _c("dot", F64, "τ_a · τ_b"),
        _c("both_changed", I64, "weights both children changed"),
        _c("sign_conflicts", I64, "of those, weights they pushed in opposite directions"),
    ),
)

SUGGESTED_BASES = Table(
    "suggested_bases",
    "model of a shared architecture with an older relative: the base its weights suggest "
    "(`wpipe lineage suggest`, refreshed by an ingest that changed models; docs: lineage)",
    (
        _c("child_id", STR, "models.model_id of the model"),
        _c("base_id", STR, "models.model_id of its most likely base"),
        _c("distance", F64, "relative distance of the two (tile means)"),
        _c("confidence", F64, "0-1: 1 - nearest / second nearest, or from the spread ratio"),
        _c("kurtosis_gap", F64, "the model's mean kernel kurtosis minus the base's"),
        _c("angle_at_base", F64, "angle base's base - base - model, degrees (NULL: a root base)"),
        _c("rule", STR, "nearest or sibling (placed beside a same-recipe twin)"),
        _c("computed_at", TS, "when the suggestions of its architecture were computed"),
    ),
)

MODEL_TABLES = (
    MODELS, LAYERS, WEIGHTS, HISTOGRAMS, WEIGHT_VALUES, UNITS, SPECTRA, EIGENVALUES, WEIGHT_TILES,
)  # fmt: skip
# Derived tables live in DuckDB only: they are recomputed from the lake, the files' names and
# the user's CSV files.
DERIVED_TABLES = (DRIFT, MODEL_TAGS, MODEL_METRICS)
# Layer outputs live in DuckDB only, keyed by model and input set (`wpipe activations`).
ACTIVATION_TABLES = (
    ACTIVATION_RUNS, ACTIVATIONS, ACTIVATION_HISTOGRAMS, ACTIVATION_UNITS, ACTIVATION_STATUS,
)  # fmt: skip
# Lineage is the user's word, its updates computed from the files, the suggested bases from the
# stored tile means (DuckDB only, like drift).
LINEAGE_TABLES = (LINEAGE, UPDATES, UPDATE_PAIRS, SUGGESTED_BASES)
# Names are given once and kept (DuckDB only, like ingest_errors): never recomputed.
ALL_TABLES = (
    *MODEL_TABLES, *DERIVED_TABLES, *ACTIVATION_TABLES, *LINEAGE_TABLES, INGEST_ERRORS,
    MODEL_NAMES,
)  # fmt: skip
