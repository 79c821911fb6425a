"""Sub-layers from variable scopes: a weights group whose variables carry deeper scopes than
its own name holds several real layers.

A Hugging Face `tf_model.h5` keeps all of BERT in one group `bert` whose variables are
`tf_bert_model/bert/encoder/layer_._0/attention/self/query/kernel:0`; a tf_keras nested model's
group `sub` holds `d_in/kernel:0`; Keras 3.3+ writes `subseq/d_in/kernel`. The scopes between
the group's own name and the variable are the sub-layer's path. Scopes that belong to one
layer's own variables (an RNN's cell, Bidirectional's forward/backward halves) never start a
sub-layer. Format-neutral: any reader whose variables are named by `/`-joined scopes can use it.
"""

from __future__ import annotations

import functools
import re

# Scopes inside one layer: an RNN cell (`lstm_cell`, `cell`), Bidirectional's halves.
_INNER_SCOPE = re.compile(r"^(cell|[a-z_]*_cell(_\d+)?|forward_.*|backward_.*)$")
_SUFFIX = re.compile(r":\d+(_\d+)?$")

Owned = list[tuple[str, list[str]]]  # (stored name, its components below the sub-layer)


def split_by_scope(group_name: str, weight_names: list[str]) -> dict[str, Owned] | None:
    """{sub-layer path relative to the group ('' for the group itself): its variables}, in
    order of first appearance; None when every variable belongs to the group itself."""
    owned: dict[str, Owned] = {}
    for full in weight_names:
        path, rest = sublayer_of(group_name, full)
        owned.setdefault(path, []).append((full, rest))
    return None if set(owned) <= {""} else owned


def sublayer_of(group_name: str, full: str) -> tuple[str, list[str]]:
    """(sub-layer path, the components below it) of one stored variable name."""
    parts = full.split("/")
    scopes = below_own_scope(group_name, parts[:-1])
    cut = next((i for i, s in enumerate(scopes) if _INNER_SCOPE.match(s)), len(scopes))
    return "/".join(scopes[:cut]), [*scopes[cut:], parts[-1]]


def below_own_scope(group_name: str, scopes: list[str]) -> list[str]:
    """The scopes after the group's own name (`tf_bert_model/bert/…` in group `bert`), and
    after its repeats (`shared/shared/…`, TF1's `predictions/predictions_1/…`); all of them
    when the name does not appear (tf_keras names a nested model's variables by its layers)."""
    own, last = _own(group_name)
    k = len(own)
    for i in range(len(scopes) - k + 1):
        if scopes[i : i + k - 1] == own[:-1] and last.fullmatch(scopes[i + k - 1]):
            j = i + k
            while j < len(scopes) and last.fullmatch(scopes[j]):
                j += 1
            return scopes[j:]
    return scopes


@functools.lru_cache(maxsize=256)
def _own(group_name: str) -> tuple[list[str], re.Pattern]:
    """The group name's scopes, and a matcher of its last one with TF's `_<n>` suffix."""
    own = group_name.split("/")
    return own, re.compile(re.escape(own[-1]) + r"(_\d+)?")


def variable_name(component: str) -> str:
    """A stored name's last component without TF's `:0` (`kernel:0` -> `kernel`)."""
    return _SUFFIX.sub("", component)
