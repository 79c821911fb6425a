-- Comparison across models (docs: comparing).

-- keras_default_name(name, class_name): whether a layer name is one Keras gives by itself
-- (`conv1d`, `conv1d_1`, `batch_normalization_3`, `cu_dnnlstm_1`: the class in snake case, as
-- Keras's to_snake_case spells it, with an optional counter). Such a name says only how many
-- layers of the class the session had built before: a weak identity. Without a class (a
-- weights-only file), the snake-case spelling of a common Keras class, or any with a counter.
CREATE OR REPLACE MACRO keras_default_stem(class_name) AS
    lower(regexp_replace(regexp_replace(regexp_replace(class_name, '\W+', '', 'g'),
          '(.)([A-Z][a-z]+)', '\1_\2', 'g'), '([a-z])([A-Z])', '\1_\2', 'g'));
CREATE OR REPLACE MACRO keras_default_name(name, class_name) AS
    CASE WHEN class_name IS NOT NULL
         THEN regexp_full_match(name, keras_default_stem(class_name) || '(_[0-9]+)?')
         ELSE regexp_full_match(name, '[a-z][a-z0-9]*(_[a-z0-9]+)*_[0-9]+')
              OR regexp_full_match(name, '(dense|conv[123]d|conv[123]d_transpose|'
                  || 'depthwise_conv[12]d|separable_conv[12]d|embedding|lstm|gru|simple_rnn|'
                  || 'cu_dnnlstm|cu_dnngru|batch_normalization|layer_normalization|'
                  || 'bidirectional|time_distributed|multi_head_attention)(_[0-9]+)?')
    END;

-- layer_signatures(m): the weighted layers of one model, in order, with a signature of their
-- tensors' roles and shapes (what alignment matches on) and whether their name is Keras's own.
CREATE OR REPLACE MACRO layer_signatures(m) AS TABLE
    WITH sig AS (  -- one scan of the model's weights (a subquery per layer cost ~30 ms)
        SELECT layer_path,
               string_agg(role || ':' || shape::VARCHAR, ';' ORDER BY weight_index) AS signature
        FROM weights WHERE model_id = m GROUP BY layer_path)
    SELECT l.model_id, l.layer_path, l.class_name, l.n_params,
           row_number() OVER (ORDER BY l.layer_index) AS position,
           s.signature,
           keras_default_name(l.layer_name, l.class_name) AS auto_named
    FROM layers AS l LEFT JOIN sig AS s USING (layer_path)
    WHERE l.model_id = m AND l.n_tensors > 0;

-- align_layers(a, b): THE pairing of model a's weighted layers with model b's; `wpipe
-- compare`, `compare --matrix`, the drift of a series, the report's figures and the views
-- below all take their pairs from here. In three passes, each over what the ones before left:
--   1. `path` (models of two architectures): the same layer path, where it is a name the user
--      gave (a strong identity);
--   2. `position` (both models of one arch_id: the layer in the same place of the same
--      architecture, whatever the names) or `class and shapes` (other architectures): the k-th
--      layer of a class and weight signature in A with the k-th in B, in order of position;
--   3. `auto-generated name`: the same Keras default name (`dense_3`) and nothing better.
-- The ingest's drift pairs a series' checkpoints (one arch_id) by position the same way
-- (filemap.positions).
-- A layer matched by none appears with NULL on the other side (`unmatched`). `certain` is false
-- where the pair is a guess: pass 3, or pass 2 where A and B have different numbers of layers of
-- that class and signature left. `comparable` is true where both layers have one class and the
-- same weight roles and shapes (drift and cosine mean something there).
CREATE OR REPLACE MACRO align_layers(a, b) AS TABLE
    WITH
    la AS MATERIALIZED (SELECT * FROM layer_signatures(a)),
    lb AS MATERIALIZED (SELECT * FROM layer_signatures(b)),
    same_arch AS (
        SELECT count(DISTINCT arch_id) = 1 AND count(*) = 2 AS yes
        FROM models WHERE model_id IN (a, b)),
    by_path AS (
        SELECT la.layer_path AS path_a, lb.layer_path AS path_b, 'path' AS matched_by,
               true AS certain
        FROM la JOIN lb USING (layer_path)
        WHERE NOT la.auto_named AND NOT lb.auto_named AND NOT (SELECT yes FROM same_arch)),
    rest_a AS (
        SELECT *, row_number() OVER (PARTITION BY class_name, signature ORDER BY position) AS k,
               count(*) OVER (PARTITION BY class_name, signature) AS n
        FROM la WHERE layer_path NOT IN (SELECT path_a FROM by_path)),
    rest_b AS (
        SELECT *, row_number() OVER (PARTITION BY class_name, signature ORDER BY position) AS k,
               count(*) OVER (PARTITION BY class_name, signature) AS n
        FROM lb WHERE layer_path NOT IN (SELECT path_b FROM by_path)),
    by_shape AS (
        SELECT rest_a.layer_path AS path_a, rest_b.layer_path AS path_b,
               CASE WHEN (SELECT yes FROM same_arch) THEN 'position'
                    ELSE 'class and shapes' END AS matched_by,
               rest_a.n = rest_b.n AS certain
        FROM rest_a JOIN rest_b
          ON rest_a.class_name IS NOT DISTINCT FROM rest_b.class_name
         AND rest_a.signature = rest_b.signature AND rest_a.k = rest_b.k),
    by_weak_name AS (
        SELECT la.layer_path AS path_a, lb.layer_path AS path_b,
               'auto-generated name' AS matched_by, false AS certain
        FROM la JOIN lb USING (layer_path)
        WHERE la.layer_path NOT IN (SELECT path_a FROM by_path UNION ALL
                                    SELECT path_a FROM by_shape)
          AND lb.layer_path NOT IN (SELECT path_b FROM by_path UNION ALL
                                    SELECT path_b FROM by_shape)),
    matched AS (SELECT * FROM by_path UNION ALL SELECT * FROM by_shape
                UNION ALL SELECT * FROM by_weak_name)
    SELECT la.position AS position_a, lb.position AS position_b,
           coalesce(m.path_a, la.layer_path) AS path_a, lb.layer_path AS path_b,
           coalesce(la.class_name, lb.class_name) AS class_name,
           la.n_params AS n_params_a, lb.n_params AS n_params_b,
           la.signature = lb.signature AS same_shapes,
           coalesce(m.matched_by, 'unmatched') AS matched_by,
           -- comparable: the same class with the same weight roles and shapes, so drift and
           -- cosine mean something; other pairs are compared by size and statistics only
           coalesce(m.matched_by IS NOT NULL AND la.signature = lb.signature
                    AND la.class_name IS NOT DISTINCT FROM lb.class_name, false) AS comparable,
           m.certain  -- NULL where there is no pair
    FROM matched AS m
    FULL JOIN la ON la.layer_path = m.path_a
    FULL JOIN lb ON lb.layer_path = m.path_b
    ORDER BY coalesce(la.position, lb.position), lb.position;

-- unmatched_layers(a, b): layers of either model that align_layers could not match.
CREATE OR REPLACE MACRO unmatched_layers(a, b) AS TABLE
    SELECT CASE WHEN path_b IS NULL THEN a ELSE b END AS model_id,
           coalesce(path_a, path_b) AS layer_path, class_name,
           coalesce(n_params_a, n_params_b) AS n_params
    FROM align_layers(a, b)
    WHERE matched_by = 'unmatched';

-- layer_drift: drift per layer between consecutive checkpoints of a series (all tensors of the
-- layer taken together). Pairs computed on demand by `wpipe compare` stay out (drift rows with
-- series NULL): comparing two models never changes this view.
CREATE OR REPLACE VIEW layer_drift AS
SELECT d.series, d.model_a, ma.name AS name_a, d.model_b, mb.name AS name_b,
       tb.value AS epoch_b, d.layer_path,
       sqrt(sum(d.l2_diff ^ 2)) / nullif(sqrt(sum(d.l2_a ^ 2)), 0) AS rel_l2,
       sum(d.l2_a * d.l2_b * d.cosine) / nullif(sqrt(sum(d.l2_a ^ 2) * sum(d.l2_b ^ 2)), 0)
           AS cosine,
       sum(d.sign_flip_frac * d.size) / sum(d.size) AS sign_flip_frac,
       max(d.max_abs_change) AS max_abs_change
FROM drift AS d
JOIN models AS ma ON ma.model_id = d.model_a
JOIN models AS mb ON mb.model_id = d.model_b
LEFT JOIN model_tags AS tb ON tb.model_id = d.model_b AND tb.key = 'epoch'
WHERE d.series IS NOT NULL
GROUP BY ALL
ORDER BY d.series, epoch_b, name_b, d.layer_path;

-- model_overview: one row per model: size, parameters by layer class, health, tags, metrics.
CREATE OR REPLACE VIEW model_overview AS
WITH
by_class AS (
    SELECT model_id, map(list(coalesce(class_name, '?')), list(n)) AS params_by_class
    FROM (SELECT model_id, class_name, sum(n_params) AS n FROM layers
          WHERE n_params > 0 GROUP BY ALL ORDER BY class_name)
    GROUP BY model_id),
health AS (
    SELECT model_id,
           count(*) FILTER (WHERE nan_or_inf) AS nan_or_inf_tensors,
           count(*) FILTER (WHERE exploding) AS exploding_tensors,
           coalesce(sum(dead_units), 0) AS dead_units,
           count(*) FILTER (WHERE saturating_forget_gate) AS saturating_forget_gates,
           count(*) FILTER (WHERE sparse) AS sparse_tensors
    FROM weight_health GROUP BY model_id),
tags AS (SELECT model_id, map(list(key ORDER BY key), list(value ORDER BY key)) AS tags
         FROM model_tags GROUP BY model_id),
metrics AS (SELECT model_id, map(list(metric ORDER BY metric), list(value ORDER BY metric))
                AS metrics
            FROM model_metrics GROUP BY model_id)
SELECT m.name AS model, m.format, m.keras_version, m.backend, m.model_class, m.arch_id,
       m.n_layers, m.n_params, m.n_trainable, m.n_non_trainable,
       round(m.file_bytes / 1e6, 3) AS file_mb, c.params_by_class,
       h.* EXCLUDE (model_id), t.tags, x.metrics, m.path, m.model_id
FROM models AS m
LEFT JOIN by_class AS c USING (model_id)
LEFT JOIN health AS h USING (model_id)
LEFT JOIN tags AS t USING (model_id)
LEFT JOIN metrics AS x USING (model_id)
ORDER BY m.name;

-- layer_compare: one row per weighted layer and model with its key numbers, long form (pivot
-- on `model` or on `layer_path`; where two models name their layers otherwise, e.g. a
-- fine-tune saved in another session, align_layers pairs them).
CREATE OR REPLACE VIEW layer_compare AS
WITH
stats AS (
    SELECT model_id, layer_path,
           sqrt(sum(l2 ^ 2)) AS l2,
           max(max_abs) AS max_abs,
           sum(near_zero_frac * size) / sum(size) AS near_zero_frac,
           any_value(std ORDER BY weight_index) FILTER (WHERE role = 'kernel') AS kernel_std,
           any_value(mean ORDER BY weight_index) FILTER (WHERE role = 'bias') AS bias_mean
    FROM weights GROUP BY ALL),
health AS (
    SELECT model_id, layer_path, sum(dead_units) AS dead_units,
           bool_or(nan_or_inf OR exploding) AS unstable
    FROM weight_health GROUP BY ALL),
previous AS (
    SELECT model_b AS model_id, layer_path, rel_l2 AS drift_from_previous
    FROM layer_drift WHERE series IS NOT NULL)
SELECT m.name AS model, m.arch_id, l.layer_index, l.layer_path, l.class_name, l.n_params,
       s.* EXCLUDE (model_id, layer_path), h.dead_units, h.unstable, p.drift_from_previous,
       m.model_id
FROM layers AS l
JOIN models AS m USING (model_id)
JOIN stats AS s USING (model_id, layer_path)
LEFT JOIN health AS h USING (model_id, layer_path)
LEFT JOIN previous AS p USING (model_id, layer_path)
ORDER BY m.name, l.layer_index;

-- metric_vs_weights: each model's metrics next to its weight summaries.
CREATE OR REPLACE VIEW metric_vs_weights AS
SELECT x.metric, x.value AS metric_value, s.*
FROM model_metrics AS x
JOIN model_summary AS s USING (model_id)
ORDER BY x.metric, s.model;
