"""What the `hf` backend (`--impl hf`, convert/hf_adapter.py) declares: for each transformers
model type, the features (names: spec/features.py) its class expresses, declared by the
type's module as `FEATURES` (convert/models/<type>.py), and `FEATURES`, their union.

A config runs under `--impl hf` as the type its `hf_model_type` names, so the adapter checks
it against that type's set: a config that needs a feature its type lacks is NOT SUPPORTED,
naming the feature.  What features cannot say (a type that hard-codes a value, or ties two
fields together, such as LLaMA's `attention_bias` covering q, k, v and o at once) is checked
field by field by each type's `config_to_hf` (convert/fields.py `check_expressible`).

Sources: transformers 5.23 `models/<type>/modeling_<type>.py`.
"""

from lmref.convert.models import MODEL_TYPES

FEATURES_BY_TYPE: dict[str, frozenset[str]] = {model_type: module.FEATURES for model_type, module in MODEL_TYPES.items()}
FEATURES: frozenset[str] = frozenset().union(*FEATURES_BY_TYPE.values())
