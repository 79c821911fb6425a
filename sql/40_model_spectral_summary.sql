-- model_spectral_summary: one row per model, WeightWatcher's get_summary(): the mean of each
-- spectral metric over the model's analysed matrices (spectra rows with status 'ok'; docs: spectral). Rows of vectors and biases are not matrices and are not counted as skipped.
CREATE OR REPLACE VIEW model_spectral_summary AS
SELECT
    m.name AS model,
    count(*) FILTER (WHERE s.status = 'ok') AS n_matrices,
    count(*) FILTER (WHERE s.status <> 'ok' AND len(w.shape) >= 2 AND w.role <> 'bias')
        AS n_skipped,
    avg(s.alpha) FILTER (WHERE s.status = 'ok') AS alpha,
    avg(s.alpha_weighted) FILTER (WHERE s.status = 'ok') AS alpha_weighted,
    avg(s.log_alpha_norm) FILTER (WHERE s.status = 'ok') AS log_alpha_norm,
    avg(s.log_norm) FILTER (WHERE s.status = 'ok') AS log_norm,
    avg(s.log_spectral_norm) FILTER (WHERE s.status = 'ok') AS log_spectral_norm,
    avg(s.stable_rank) FILTER (WHERE s.status = 'ok') AS stable_rank,
    avg(s.entropy) FILTER (WHERE s.status = 'ok') AS entropy,
    count(*) FILTER (WHERE s.warning = 'over-trained') AS n_over_trained,
    count(*) FILTER (WHERE s.warning = 'under-trained') AS n_under_trained,
    m.model_id
FROM models AS m
LEFT JOIN spectra AS s USING (model_id)
LEFT JOIN weights AS w USING (model_id, layer_path, weight_name)
GROUP BY m.name, m.model_id
ORDER BY m.name;
