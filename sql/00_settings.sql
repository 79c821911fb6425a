-- settings: every threshold the health views use, kept in one place (docs: health-rules).
-- Change one with  UPDATE settings SET value = 0.8 WHERE name = 'sparse_frac';
-- the change stays in the database: re-applying this file only adds missing names.
CREATE TABLE IF NOT EXISTS settings (name VARCHAR PRIMARY KEY, value DOUBLE, doc VARCHAR);
INSERT INTO settings VALUES
    ('dead_abs', 1e-4,
     'a unit/filter is dead when every incoming weight has |w| below this; a BN channel when |gamma| is'),
    ('sparse_frac', 0.5,
     'a kernel is sparse when more than this fraction of its weights is zero, exactly or within sparse_rel of its max |w|'),
    ('sparse_rel', 0.01,
     'near_zero_frac counts towards sparse only when --near-zero is at most this fraction of the tensor''s max |w|'),
    ('explode_abs', 100.0,
     'a weight tensor explodes when some |w| exceeds this absolute limit'),
    ('explode_ratio', 1000.0,
     'or when a kernel''s farthest weight from its median exceeds this many robust standard deviations (IQR / 1.349)'),
    ('explode_growth', 10.0,
     'or when a kernel''s L2 norm exceeds this many times its norm at the first checkpoint of its series'),
    ('explode_min_size', 64.0,
     'the ratio test needs at least this many elements: a small tensor has no stable spread'),
    ('explode_spread_floor', 1e-3,
     'the ratio test divides by at least this spread: a near-constant tensor (gamma = 1, LayerScale) has none'),
    ('forget_bias_high', 5.0,
     'LSTM forget gate saturates open when its mean bias is above this (sigmoid(5) = 0.993)'),
    ('forget_bias_low', -5.0,
     'LSTM forget gate saturates shut when its mean bias is below this (sigmoid(-5) = 0.007)'),
    ('dead_activation_frac', 0.75,
     'a ReLU layer''s output has dead_units_by_activation when more than this fraction of its units never exceeds 0 on an input set'),
    ('saturated_sample_frac', 0.75,
     'a tanh/sigmoid unit is saturated when it sits on a rail (|a| > 0.99 of its half-range) for more than this fraction of samples'),
    ('saturated_unit_frac', 0.5,
     'a tanh/sigmoid layer''s output has saturated_units when more than this fraction of its units is saturated')
ON CONFLICT (name) DO NOTHING;
-- thresholds whose default changed (docs: health-rules): a row still holding an older
-- wpipe's default and text takes the new one; a value the user set is kept
INSERT INTO settings VALUES
    ('explode_ratio', 1000.0,
     'or when a kernel''s farthest weight from its median exceeds this many robust standard deviations (IQR / 1.349)'),
    ('sparse_frac', 0.5,
     'a kernel is sparse when more than this fraction of its weights is zero, exactly or within sparse_rel of its max |w|')
ON CONFLICT (name) DO UPDATE SET value = excluded.value, doc = excluded.doc
    WHERE settings.doc IN ('or when max |w| exceeds this many robust standard deviations (IQR / 1.349) of its tensor',
                           'a tensor is sparse when more than this fraction of its weights is near zero')
      AND settings.value IN (50.0, 0.5);
