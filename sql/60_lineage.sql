-- fine_tunes: one row per model whose base is known (lineage), with how much it changed:
-- whole-model ‖τ‖/‖W_base‖ over the tensors paired with the base's, and how many it left
-- untouched (τ = 0: frozen or untrained). `stale`: a file changed since; `wpipe lineage set`
-- computes it again.
CREATE OR REPLACE VIEW fine_tunes AS
SELECT c.name AS model, b.name AS base, l.source,
       count(u.weight_name) AS n_tensors,
       count(*) FILTER (WHERE u.untouched) AS untouched_tensors,
       sqrt(sum(u.update_l2 ^ 2)) / nullif(sqrt(sum(u.base_l2 ^ 2)), 0) AS rel_update,
       max(u.rel_update) AS max_tensor_rel_update,
       c.sha256 IS DISTINCT FROM l.sha256_child OR b.sha256 IS DISTINCT FROM l.sha256_base
           AS stale,
       l.child_id, l.base_id
FROM lineage AS l
JOIN models AS c ON c.model_id = l.child_id
JOIN models AS b ON b.model_id = l.base_id
LEFT JOIN updates AS u ON u.child_id = l.child_id AND u.base_id = l.base_id
GROUP BY ALL
ORDER BY base, model;

-- update_tensors: per pair of children of one base and tensor, the cosine of their updates
-- and the share of weights both changed that they pushed in opposite directions. Both orders
-- of each pair are listed, so a pivot gives the N×N matrix.
CREATE OR REPLACE VIEW update_tensors AS
WITH p AS (
    SELECT base_id, child_a, child_b, base_layer_path, weight_name, dot, both_changed,
           sign_conflicts FROM update_pairs
    UNION ALL
    SELECT base_id, child_b, child_a, base_layer_path, weight_name, dot, both_changed,
           sign_conflicts FROM update_pairs)
SELECT mb.name AS base, ma.name AS model_a, mc.name AS model_b, p.base_layer_path AS layer_path,
       p.weight_name, p.dot / nullif(ua.update_l2 * ub.update_l2, 0) AS cosine,
       p.sign_conflicts / nullif(p.both_changed, 0) AS sign_conflict_rate,
       p.dot, ua.update_l2 AS update_l2_a, ub.update_l2 AS update_l2_b, p.both_changed,
       p.sign_conflicts, p.base_id, p.child_a, p.child_b
FROM p
JOIN updates AS ua ON ua.child_id = p.child_a AND ua.base_layer_path = p.base_layer_path
    AND ua.weight_name = p.weight_name
JOIN updates AS ub ON ub.child_id = p.child_b AND ub.base_layer_path = p.base_layer_path
    AND ub.weight_name = p.weight_name
JOIN models AS mb ON mb.model_id = p.base_id
JOIN models AS ma ON ma.model_id = p.child_a
JOIN models AS mc ON mc.model_id = p.child_b;

-- update_agreement: the same per layer and for the whole model (layer_path NULL): cosines
-- of the concatenated updates, sign conflicts over every weight both children changed.
CREATE OR REPLACE VIEW update_agreement AS
SELECT base, model_a, model_b, layer_path,
       sum(dot) / nullif(sqrt(sum(update_l2_a ^ 2)) * sqrt(sum(update_l2_b ^ 2)), 0) AS cosine,
       sum(sign_conflicts) / nullif(sum(both_changed), 0) AS sign_conflict_rate,
       any_value(base_id) AS base_id, any_value(child_a) AS child_a,
       any_value(child_b) AS child_b
FROM update_tensors
GROUP BY GROUPING SETS ((base, model_a, model_b, layer_path), (base, model_a, model_b))
ORDER BY base, model_a, model_b, layer_path NULLS FIRST;

-- lineage_suggestions: one row per model whose weights suggest a base (`suggested_bases`,
-- refreshed by `wpipe lineage suggest` and by an ingest that changed models), with the base
-- named in `lineage` if any: `accepted` when it is the suggested one. Accept one with
-- `wpipe lineage set MODEL SUGGESTED_BASE`, or every one with `wpipe lineage suggest --accept`.
CREATE OR REPLACE VIEW lineage_suggestions AS
SELECT c.name AS model, b.name AS suggested_base, s.confidence, s.rule, s.distance,
       s.kurtosis_gap, s.angle_at_base, n.name AS named_base,
       coalesce(l.base_id = s.base_id, false) AS accepted, l.source AS named_by,
       s.computed_at, s.child_id, s.base_id
FROM suggested_bases AS s
JOIN models AS c ON c.model_id = s.child_id
JOIN models AS b ON b.model_id = s.base_id
LEFT JOIN lineage AS l ON l.child_id = s.child_id
LEFT JOIN models AS n ON n.model_id = l.base_id
ORDER BY model;
