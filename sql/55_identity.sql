-- identical_models: models whose weights are identical (models.weights_sha) although their
-- files differ or are the same: the .h5, .keras and .weights.h5 saves of one model, a re-save,
-- a copy. duplicate_models keeps its meaning (same file bytes). The model ingested first (then
-- the first by path) stands for its group.
CREATE OR REPLACE VIEW identical_models AS
WITH g AS (
    SELECT model_id, name, path, format, sha256, weights_sha,
           first_value(model_id) OVER w AS same_as_id,
           first_value(name) OVER w AS same_as,
           count(*) OVER (PARTITION BY weights_sha) AS n_models,
           count(DISTINCT sha256) OVER (PARTITION BY weights_sha) AS n_files
    FROM models
    WHERE weights_sha IS NOT NULL
    WINDOW w AS (PARTITION BY weights_sha ORDER BY ingested_at, path))
SELECT name AS model, same_as AS same_weights_as, format, n_models, n_files,
       sha256 = (SELECT m.sha256 FROM models AS m WHERE m.model_id = same_as_id) AS same_file,
       weights_sha, path, same_as_id, model_id
FROM g WHERE model_id <> same_as_id
ORDER BY same_as, name;

-- shared_tensors: tensors whose values (weights.content_sha) occur in more than one model's
-- weights: a frozen backbone, the untouched layers of a fine-tune, a copied embedding.
-- Constant tensors (an all-zero bias, a fresh gamma of ones) are equal by construction, not
-- by sharing, and are left out.
CREATE OR REPLACE VIEW shared_tensors AS
WITH s AS (
    SELECT w.content_sha, w.model_id, m.name AS model, w.layer_path, w.weight_name, w.role,
           w.size,
           count(DISTINCT w.model_id) OVER (PARTITION BY w.content_sha) AS n_models
    FROM weights AS w JOIN models AS m USING (model_id)
    WHERE w.content_sha IS NOT NULL AND w.min < w.max)
SELECT model, layer_path, weight_name, role, size, n_models, content_sha, model_id
FROM s WHERE n_models > 1
ORDER BY size DESC, content_sha, model, layer_path, weight_name;
