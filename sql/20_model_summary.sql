-- model_summary: one row per model with its size and the spread of its weights.
CREATE OR REPLACE VIEW model_summary AS
SELECT
    m.name AS model,
    m.format,
    m.keras_version,
    m.model_class,
    m.arch_id,
    m.n_layers,
    m.n_tensors,
    m.n_params,
    m.n_trainable,
    m.n_non_trainable,
    round(m.file_bytes / 1e6, 3) AS file_mb,
    max(w.max_abs) AS max_abs,
    sum(w.zero_count) / nullif(sum(w.size), 0) AS zero_frac,
    sum(w.near_zero_frac * w.size) / nullif(sum(w.size), 0) AS near_zero_frac,
    sum(w.nan_count + w.inf_count) AS nonfinite_count,
    m.path,
    m.model_id
FROM models AS m
LEFT JOIN weights AS w USING (model_id)
GROUP BY ALL
ORDER BY m.name;
