-- is_statistic: roles that are running statistics or quantization parameters, not learned
-- weights (a BatchNorm moving variance is no model's largest weight; docs: health-rules).
CREATE OR REPLACE MACRO is_statistic(role) AS
    role IN ('moving_mean', 'moving_variance', 'mean', 'variance', 'count',
             'kernel_scale', 'kernel_zero', 'g_idx', 'embeddings_scale', 'embeddings_zero',
             'awq_scales', 'inputs_scale', 'inputs_amax_history', 'kernel_amax_history',
             'outputs_grad_scale', 'outputs_grad_amax_history');

-- layer_weights: one row per weight tensor with its layer's class and its model's name,
-- the usual starting point for comparing one layer or role across models.
CREATE OR REPLACE VIEW layer_weights AS
SELECT
    m.name AS model,
    m.arch_id,
    l.layer_index,
    w.layer_path,
    l.class_name,
    w.weight_name,
    w.role,
    w.trainable,
    w.shape,
    w.size,
    w.mean,
    w.std,
    w.min,
    w.max,
    w.l2,
    w.max_abs,
    w.near_zero_frac,
    w.nan_count + w.inf_count AS nonfinite_count,
    w.model_id
FROM weights AS w
JOIN models AS m USING (model_id)
LEFT JOIN layers AS l USING (model_id, layer_path)
ORDER BY m.name, w.weight_index;
