-- activation_health: one row per layer output computed by `wpipe activations` (per input set)
-- with its dead-unit count and the dead_units_by_activation flag: a ReLU layer (class ReLU, or
-- activation relu / relu6) whose units mostly never fire on the input set. Units die through
-- their activations, which weights alone cannot show. The threshold is in settings.
CREATE OR REPLACE VIEW activation_health AS
WITH t AS (SELECT value AS dead_activation_frac FROM settings WHERE name = 'dead_activation_frac')
SELECT a.model_id, m.name AS model, r.input_name, a.input_set, r.source, a.layer_path,
       a.call_index, a.output_index, a.class_name, l.activation, a.n_units, a.dead_units,
       a.dead_units / nullif(a.n_units, 0) AS dead_frac, a.zero_frac,
       a.class_name = 'ReLU' OR coalesce(l.activation IN ('relu', 'relu6'), false) AS rectifier,
       coalesce((a.class_name = 'ReLU' OR l.activation IN ('relu', 'relu6'))
                AND a.dead_units / nullif(a.n_units, 0) > t.dead_activation_frac, false)
           AS dead_units_by_activation
FROM activations AS a
JOIN models AS m USING (model_id)
JOIN activation_runs AS r USING (model_id, input_set)
LEFT JOIN layers AS l USING (model_id, layer_path), t;
