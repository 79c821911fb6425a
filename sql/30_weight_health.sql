-- weight_health: one row per weight tensor with the numbers behind each health flag and the
-- flags themselves. Thresholds come from the settings table. Flags are findings about weights,
-- not verdicts on a model: validation performance decides whether a model is good.
CREATE OR REPLACE VIEW weight_health AS
WITH
t AS (SELECT * FROM (SELECT name, value FROM settings) PIVOT (first(value) FOR name IN (
    'dead_abs', 'sparse_frac', 'explode_abs', 'explode_ratio', 'explode_min_size',
    'explode_spread_floor', 'forget_bias_high', 'forget_bias_low'))),
dead AS (
    -- units: outgoing slices of kernels (Dense units, conv filters, embedding rows, depthwise
    -- channels) and BatchNorm-style gammas; recurrent gate units are excluded (see README)
    SELECT model_id, layer_path, weight_name,
           count(*) AS n_units,
           count(*) FILTER (WHERE max_abs < (SELECT dead_abs FROM t)) AS dead_units
    FROM units
    WHERE gate IS NULL AND axis IN ('unit', 'filter', 'channel')
      AND role IN ('kernel', 'embeddings', 'depthwise_kernel', 'pointwise_kernel', 'gamma')
    GROUP BY ALL),
forget AS (
    -- cuDNN and GRU-style split biases add their input and recurrent halves
    SELECT model_id, layer_path, weight_name, sum(mean) AS forget_bias_mean
    FROM units
    WHERE axis = 'gate' AND gate = 'f' AND role = 'bias'
    GROUP BY ALL),
previous AS (
    -- the tensor's change from the previous checkpoint of its series (drift table)
    SELECT model_b AS model_id, layer_path, weight_name, l2_diff = 0 AS unchanged
    FROM drift WHERE series IS NOT NULL),
base AS (
    SELECT w.model_id, m.name AS model, w.layer_path, l.class_name, w.weight_name, w.role,
           w.size, w.near_zero_frac, w.max_abs,
           (w.p75 - w.p25) / 1.349 AS robust_std,
           -- how far the tensor reaches from its median: gamma near 1 is no outlier
           greatest(w.max - w.p50, w.p50 - w.min) AS max_deviation,
           w.min = w.max AS is_constant,
           w.nan_count + w.inf_count AS nonfinite_count,
           d.n_units, coalesce(d.dead_units, 0) AS dead_units,
           f.forget_bias_mean,
           w.trainable AND coalesce(p.unchanged, false) AS stale,
           -- running statistics and quantization parameters are not learned weights
           w.role IN ('moving_mean', 'moving_variance', 'mean', 'variance', 'count',
                      'kernel_scale', 'kernel_zero', 'g_idx',
                      'embeddings_scale', 'embeddings_zero')
               AS is_statistic,
           w.role IN ('kernel', 'recurrent_kernel', 'depthwise_kernel', 'pointwise_kernel',
                      'embeddings') AS is_kernel
    FROM weights AS w
    JOIN models AS m USING (model_id)
    LEFT JOIN layers AS l USING (model_id, layer_path)
    LEFT JOIN dead AS d USING (model_id, layer_path, weight_name)
    LEFT JOIN forget AS f USING (model_id, layer_path, weight_name)
    LEFT JOIN previous AS p USING (model_id, layer_path, weight_name))
SELECT
    b.*,
    b.max_deviation / greatest(b.robust_std, t.explode_spread_floor) AS max_abs_ratio,
    b.nonfinite_count > 0 AS nan_or_inf,
    NOT b.is_statistic AND NOT coalesce(b.is_constant, false) AND (
        b.max_abs > t.explode_abs
        OR (b.size >= t.explode_min_size
            AND b.max_deviation > t.explode_ratio * greatest(b.robust_std, t.explode_spread_floor))
    ) AS exploding,
    b.dead_units > 0 AS has_dead_units,
    b.is_kernel AND NOT coalesce(b.is_constant, false) AND b.near_zero_frac > t.sparse_frac
        AS sparse,
    coalesce(b.forget_bias_mean > t.forget_bias_high
             OR b.forget_bias_mean < t.forget_bias_low, false) AS saturating_forget_gate
FROM base AS b, t;

-- health_findings: the flagged tensors, and the layer outputs flagged by `wpipe activations`
-- (weight_name NULL, input_name set), worst first (what `wpipe health` prints).
CREATE OR REPLACE VIEW health_findings AS
SELECT * FROM (
SELECT
    model, layer_path, class_name, weight_name,
    concat_ws(', ',
        CASE WHEN nan_or_inf THEN 'nan_or_inf' END,
        CASE WHEN exploding THEN 'exploding' END,
        CASE WHEN has_dead_units THEN 'dead_units' END,
        CASE WHEN saturating_forget_gate THEN 'saturating_forget_gate' END,
        CASE WHEN sparse THEN 'sparse' END,
        CASE WHEN stale THEN 'stale' END) AS flags,
    CASE WHEN has_dead_units THEN dead_units || '/' || n_units END AS dead,
    nonfinite_count, max_abs, round(max_abs_ratio, 1) AS max_abs_ratio,
    round(near_zero_frac, 4) AS near_zero_frac, round(forget_bias_mean, 3) AS forget_bias_mean,
    4 * nan_or_inf::INT + 3 * exploding::INT + 2 * has_dead_units::INT
        + saturating_forget_gate::INT + sparse::INT + stale::INT AS severity,
    model_id, NULL::VARCHAR AS input_name, dead_units AS dead_count
FROM weight_health
WHERE nan_or_inf OR exploding OR has_dead_units OR saturating_forget_gate OR sparse OR stale
UNION ALL BY NAME
SELECT model, layer_path, class_name, NULL AS weight_name,
       'dead_units_by_activation' AS flags, dead_units || '/' || n_units AS dead,
       2 AS severity, model_id, input_name, dead_units AS dead_count
FROM activation_health
WHERE dead_units_by_activation)
ORDER BY severity DESC, dead_count DESC, model, layer_path, weight_name NULLS LAST;
