-- activation_health: one row per layer output computed by `wpipe activations` (per input set)
-- with its dead-unit count and the dead_units_by_activation flag: a ReLU layer (class ReLU, or
-- activation relu / relu6) whose units mostly never fire on the input set; its saturated-unit
-- count and the saturated flag (`saturated_units` in health_findings): a tanh/sigmoid layer whose units mostly sit on a rail
-- (|a| > 0.99 of the half-range) for nearly every sample, where their gradient vanishes; and
-- nan_or_inf for an output with NaN or inf (then neither of the others: one cause, one flag).
-- Units die and saturate through their activations, which weights alone cannot show. The
-- thresholds are in settings.
CREATE OR REPLACE VIEW activation_health AS
WITH
t AS (SELECT * FROM (SELECT name, value FROM settings) PIVOT (first(value) FOR name IN (
    'dead_activation_frac', 'saturated_sample_frac', 'saturated_unit_frac'))),
saturation AS (
    -- saturated_frac is NULL for outputs of unbounded activations (and from an older wpipe)
    SELECT model_id, input_set, layer_path, call_index, output_index,
           count(*) FILTER (WHERE saturated_frac > (SELECT saturated_sample_frac FROM t))
               AS saturated_units
    FROM activation_units
    WHERE saturated_frac IS NOT NULL
    GROUP BY ALL)
SELECT a.model_id, m.name AS model, r.input_name, a.input_set, r.source, a.layer_path,
       a.call_index, a.output_index, a.class_name, l.activation, a.n_units, a.dead_units,
       a.dead_units / nullif(a.n_units, 0) AS dead_frac, a.zero_frac,
       a.class_name = 'ReLU' OR coalesce(l.activation IN ('relu', 'relu6'), false) AS rectifier,
       coalesce(a.nan_count + a.inf_count, 0) > 0 AS nan_or_inf,
       coalesce(a.nan_count + a.inf_count, 0) = 0
       AND coalesce((a.class_name = 'ReLU' OR l.activation IN ('relu', 'relu6'))
                    AND a.dead_units / nullif(a.n_units, 0) > t.dead_activation_frac, false)
           AS dead_units_by_activation,
       s.saturated_units,
       s.saturated_units / nullif(a.n_units, 0) AS saturated_unit_frac,
       coalesce(a.nan_count + a.inf_count, 0) = 0
       AND coalesce(s.saturated_units / nullif(a.n_units, 0) > t.saturated_unit_frac, false)
           AS saturated
FROM activations AS a
JOIN models AS m USING (model_id)
JOIN activation_runs AS r USING (model_id, input_set)
LEFT JOIN layers AS l USING (model_id, layer_path)
LEFT JOIN saturation AS s USING (model_id, input_set, layer_path, call_index, output_index), t;
