-- weight_health: one row per weight tensor with the numbers behind each health flag and the
-- flags themselves. Thresholds come from the settings table. Flags are findings about weights,
-- not verdicts on a model: validation performance decides whether a model is good. Each tensor
-- is judged against what is normal for its role (docs: health-rules; the evidence per rule
-- is docs/health.md): one cause, one flag, so a tensor with NaN or inf is only nan_or_inf.
CREATE OR REPLACE VIEW weight_health AS
WITH
t AS (SELECT * FROM (SELECT name, value FROM settings) PIVOT (first(value) FOR name IN (
    'dead_abs', 'sparse_frac', 'sparse_rel', 'explode_abs', 'explode_ratio', 'explode_min_size',
    'explode_spread_floor', 'explode_growth', 'forget_bias_high', 'forget_bias_low'))),
dead AS (
    -- units: outgoing slices of kernels (Dense units, conv filters, depthwise channels) and
    -- BatchNorm-style gammas; recurrent gate units are excluded (docs: health-rules), and so are
    -- Embedding rows: a row is a token, and a padding or never-seen token's row is 0 by design
    SELECT model_id, layer_path, weight_name,
           count(*) AS n_units,
           count(*) FILTER (WHERE max_abs < (SELECT dead_abs FROM t)) AS dead_units
    FROM units
    WHERE gate IS NULL AND axis IN ('unit', 'filter', 'channel')
      AND role IN ('kernel', 'depthwise_kernel', 'pointwise_kernel', 'gamma')
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
series_start AS (
    -- each series' first checkpoint: the one that is no pair's later model
    SELECT DISTINCT d.series, d.model_a AS start_id
    FROM drift AS d
    WHERE d.series IS NOT NULL
      AND d.model_a NOT IN (SELECT model_b FROM drift AS e WHERE e.series = d.series)),
growth AS (
    -- the tensor's L2 norm over its norm at the first checkpoint of its series
    SELECT m.model_b AS model_id, w0.layer_path, w0.weight_name,
           max(w.l2 / nullif(w0.l2, 0)) AS l2_growth
    FROM (SELECT DISTINCT series, model_b FROM drift WHERE series IS NOT NULL) AS m
    JOIN series_start AS s USING (series)
    JOIN weights AS w0 ON w0.model_id = s.start_id
    JOIN weights AS w ON w.model_id = m.model_b AND w.layer_path = w0.layer_path
                     AND w.weight_name = w0.weight_name
    GROUP BY ALL),
base AS (
    SELECT w.model_id, m.name AS model, w.layer_path, l.class_name, w.weight_name, w.role,
           w.size, w.near_zero_frac, w.max_abs,
           w.zero_count / nullif(w.size, 0) AS zero_frac,
           -- near zeros are near-exact zeros only when --near-zero is tiny beside the tensor's
           -- own scale; a tensor that is merely small in scale is not sparse
           CASE WHEN w.near_zero_threshold <= (SELECT sparse_rel FROM t) * w.max_abs
                THEN w.near_zero_frac ELSE w.zero_count / nullif(w.size, 0) END AS sparse_frac,
           (w.p75 - w.p25) / 1.349 AS robust_std,
           -- how far the tensor reaches from its median: gamma near 1 is no outlier
           greatest(w.max - w.p50, w.p50 - w.min) AS max_deviation,
           w.min = w.max AS is_constant,
           w.nan_count + w.inf_count AS nonfinite_count,
           -- a NaN/inf slice reads as zeros in `units`: no dead-unit count for such a tensor
           d.n_units,
           CASE WHEN w.nan_count + w.inf_count = 0 THEN coalesce(d.dead_units, 0) END
               AS dead_units,
           f.forget_bias_mean,
           g.l2_growth,
           w.trainable AND coalesce(p.unchanged, false) AS stale,
           -- running statistics and quantization parameters are not learned weights
           is_statistic(w.role) AS is_statistic,
           w.role IN ('kernel', 'recurrent_kernel', 'depthwise_kernel', 'pointwise_kernel',
                      'embeddings') AS is_kernel,
           -- matrices whose weights mix inputs; an Embedding's rows are independent tokens
           -- (frequent ones move, rare ones keep their init), so it has no outlier spread
           w.role IN ('kernel', 'recurrent_kernel', 'depthwise_kernel', 'pointwise_kernel')
               AS is_mixing
    FROM weights AS w
    JOIN models AS m USING (model_id)
    LEFT JOIN layers AS l USING (model_id, layer_path)
    LEFT JOIN dead AS d USING (model_id, layer_path, weight_name)
    LEFT JOIN forget AS f USING (model_id, layer_path, weight_name)
    LEFT JOIN previous AS p USING (model_id, layer_path, weight_name)
    LEFT JOIN growth AS g USING (model_id, layer_path, weight_name)),
judged AS (
    SELECT b.*,
           b.max_deviation / greatest(b.robust_std, t.explode_spread_floor) AS max_abs_ratio,
           b.nonfinite_count > 0 AS nan_or_inf,
           -- what the other flags may judge: finite, learned, not an initialiser's constant
           b.nonfinite_count = 0 AND NOT b.is_statistic AND NOT coalesce(b.is_constant, false)
               AS judged
    FROM base AS b, t)
SELECT
    j.* EXCLUDE (judged),
    j.judged AND (
        j.max_abs > t.explode_abs
        OR (j.is_mixing AND j.size >= t.explode_min_size AND j.max_abs_ratio > t.explode_ratio)
        OR (j.is_mixing AND coalesce(j.l2_growth > t.explode_growth, false))
    ) AS exploding,
    coalesce(j.dead_units > 0, false) AS has_dead_units,
    -- a kernel whose every unit is dead collapsed: that is has_dead_units, not also sparse
    j.judged AND j.is_mixing AND j.sparse_frac > t.sparse_frac
        AND NOT coalesce(j.dead_units = j.n_units, false) AS sparse,
    NOT j.nan_or_inf AND coalesce(j.forget_bias_mean > t.forget_bias_high
                                  OR j.forget_bias_mean < t.forget_bias_low, false)
        AS saturating_forget_gate
FROM judged AS j, t;

-- health_findings: the flagged tensors, and the layer outputs flagged by `wpipe activations`
-- (weight_name NULL, input_name set; `saturated` = saturated units of the output's), worst
-- first (what `wpipe health` prints).
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
       concat_ws(', ',
           CASE WHEN nan_or_inf THEN 'nan_or_inf' END,
           CASE WHEN dead_units_by_activation THEN 'dead_units_by_activation' END,
           CASE WHEN saturated THEN 'saturated_units' END) AS flags,
       CASE WHEN dead_units_by_activation THEN dead_units || '/' || n_units END AS dead,
       CASE WHEN saturated THEN saturated_units || '/' || n_units END AS saturated,
       4 * nan_or_inf::INT + 2 * dead_units_by_activation::INT + 2 * saturated::INT AS severity,
       model_id, input_name, dead_units AS dead_count
FROM activation_health
WHERE nan_or_inf OR dead_units_by_activation OR saturated)
ORDER BY severity DESC, dead_count DESC, model, layer_path, weight_name NULLS LAST;
