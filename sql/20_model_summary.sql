-- duplicate_models: models whose file has the same content (sha256) as another's; the one
-- ingested first (then the first by path) is the original, the others are its duplicates.
-- Counts across models (correlate, metric charts, the report) leave duplicates out.
CREATE OR REPLACE VIEW duplicate_models AS
WITH g AS (
    SELECT model_id, name, path, sha256,
           first_value(model_id) OVER w AS original_id,
           first_value(name) OVER w AS original,
           count(*) OVER (PARTITION BY sha256) AS n_copies
    FROM models
    WINDOW w AS (PARTITION BY sha256 ORDER BY ingested_at, path))
SELECT name AS model, original AS duplicate_of_model, n_copies, sha256, path,
       original_id AS duplicate_of, model_id
FROM g WHERE model_id <> original_id
ORDER BY original, name;

-- model_summary: one row per model with its size, the spread of its weights, and whole-model
-- statistics over all its trainable weights taken as one set of numbers (trainable_mean,
-- _std (population), _abs_mean, _l2), which compare even unrelated architectures. max_abs,
-- zero_frac and near_zero_frac are over learned weights (running statistics and quantization
-- parameters left out: is_statistic); nonfinite_count is over every tensor.
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
    m.macs,
    round(m.file_bytes / 1e6, 3) AS file_mb,
    max(w.max_abs) FILTER (WHERE NOT is_statistic(w.role)) AS max_abs,
    sum(w.zero_count) FILTER (WHERE NOT is_statistic(w.role))
        / nullif(sum(w.size) FILTER (WHERE NOT is_statistic(w.role)), 0) AS zero_frac,
    sum(w.near_zero_frac * w.size) FILTER (WHERE NOT is_statistic(w.role))
        / nullif(sum(w.size) FILTER (WHERE NOT is_statistic(w.role)), 0) AS near_zero_frac,
    sum(w.nan_count + w.inf_count) AS nonfinite_count,
    sum(w.size * w.mean) FILTER (WHERE w.trainable)
        / nullif(sum(w.size) FILTER (WHERE w.trainable), 0) AS trainable_mean,
    sqrt(greatest(
        sum(w.size * (w.std ^ 2 + w.mean ^ 2)) FILTER (WHERE w.trainable)
            / nullif(sum(w.size) FILTER (WHERE w.trainable), 0)
        - (sum(w.size * w.mean) FILTER (WHERE w.trainable)
            / nullif(sum(w.size) FILTER (WHERE w.trainable), 0)) ^ 2, 0)) AS trainable_std,
    sum(w.size * w.abs_mean) FILTER (WHERE w.trainable)
        / nullif(sum(w.size) FILTER (WHERE w.trainable), 0) AS trainable_abs_mean,
    sqrt(sum(w.l2 ^ 2) FILTER (WHERE w.trainable)) AS trainable_l2,
    any_value(d.duplicate_of) AS duplicate_of,
    m.path,
    m.model_id
FROM models AS m
LEFT JOIN weights AS w USING (model_id)
LEFT JOIN duplicate_models AS d USING (model_id)
GROUP BY ALL
ORDER BY m.name;

-- model_role_summary: the same whole-model statistics per weight role (kernel, bias,
-- recurrent_kernel, gamma, ...), trainable weights only: one row per model and role.
CREATE OR REPLACE VIEW model_role_summary AS
SELECT
    m.name AS model,
    w.role,
    count(*) AS n_tensors,
    sum(w.size) AS size,
    sum(w.size * w.mean) / nullif(sum(w.size), 0) AS mean,
    sqrt(greatest(sum(w.size * (w.std ^ 2 + w.mean ^ 2)) / nullif(sum(w.size), 0)
        - (sum(w.size * w.mean) / nullif(sum(w.size), 0)) ^ 2, 0)) AS std,
    sum(w.size * w.abs_mean) / nullif(sum(w.size), 0) AS abs_mean,
    sqrt(sum(w.l2 ^ 2)) AS l2,
    max(w.max_abs) AS max_abs,
    m.model_id
FROM weights AS w
JOIN models AS m USING (model_id)
WHERE w.trainable
GROUP BY m.name, w.role, m.model_id
ORDER BY m.name, w.role;

-- architectures: one row per arch_id with a readable label, its weighted layers' classes in
-- order with runs counted (`Conv2D×2 → Dense×2`), and how many models share it.
CREATE OR REPLACE VIEW architectures AS
WITH
weighted AS (
    SELECT model_id, layer_index, coalesce(class_name, '?') AS class_name,
           row_number() OVER (PARTITION BY model_id ORDER BY layer_index)
           - row_number() OVER (PARTITION BY model_id, coalesce(class_name, '?')
                                ORDER BY layer_index) AS run
    FROM layers WHERE n_tensors > 0),
runs AS (
    SELECT model_id, class_name, count(*) AS n, min(layer_index) AS first
    FROM weighted GROUP BY model_id, class_name, run),
labels AS (
    SELECT model_id,
           string_agg(class_name || CASE WHEN n > 1 THEN '×' || n ELSE '' END, ' → '
                      ORDER BY first) AS label
    FROM runs GROUP BY model_id)
SELECT m.arch_id,
       coalesce(any_value(l.label), 'no weights') AS label,
       count(*) AS n_models,
       list(m.name ORDER BY m.name)[1:3] AS example_models
FROM models AS m
LEFT JOIN labels AS l USING (model_id)
GROUP BY m.arch_id
ORDER BY n_models DESC, label;
