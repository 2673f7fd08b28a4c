"""attnjax.functional._checks: each rule written once, and every owner of a value applies it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnjax
from attnjax.functional import _checks
from attnjax.layers.attention import MultiHeadAttention
from attnjax.models import ModelConfig


def _layer(**kwargs):
    sizes = dict(model_dim=kwargs.pop("model_dim", 8), num_heads=kwargs.pop("num_heads", 2))
    return MultiHeadAttention(**sizes, **kwargs, rngs=nnx.Rngs(0))


CASES = [  # (ModelConfig fields, MultiHeadAttention arguments, the rule's message)
    (dict(num_heads=3), dict(num_heads=3), "num_heads=3 must divide model_dim=8"),
    (
        dict(num_kv_heads=3, num_heads=4),
        dict(num_kv_heads=3, num_heads=4),
        "num_kv_heads=3 must divide num_heads=4",
    ),
    (dict(dropout_rate=1.0), dict(dropout_rate=1.0), r"dropout_rate must be in \[0, 1\), got 1.0"),
    (
        dict(attention_implementation="flash"),
        dict(implementation="flash"),
        "implementation='flash' is unknown",
    ),
    (
        dict(head_dim=5, position_embedding="rope"),
        dict(head_dim=5, rope=True),
        "needs an even head_dim, got 5",
    ),
    (dict(num_heads=True), dict(num_heads=True), "num_heads must be a positive int, got True"),
]


@pytest.mark.parametrize("config, layer, message", CASES)
def test_the_config_and_the_layer_refuse_the_same_values_with_the_same_rule(config, layer, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"model_dim": 8, **config})
    with pytest.raises(ValueError, match=message):
        _layer(**layer)


def test_functional_applies_the_same_rules_to_arrays(key):
    q = jax.random.normal(key, (1, 4, 4, 6))
    kv = jax.random.normal(key, (1, 4, 3, 6))
    with pytest.raises(ValueError, match=r"num_kv_heads=3 \(key \(1, 4, 3, 6\)\) must divide"):
        attnjax.dot_product_attention(q, kv, kv)
    with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\), got -0.1"):
        attnjax.dot_product_attention(q, q, q, dropout_rate=-0.1, dropout_rng=key)
    with pytest.raises(ValueError, match="RoPE needs an even head width H"):
        attnjax.functional.apply_rope(q[..., :5], jnp.arange(4)[None])


def test_sizes_are_checked_and_normalised(without_jaxtyping):
    config = ModelConfig(model_dim=np.int64(12), num_heads=np.int32(3), mlp_dim=np.int64(20))
    assert type(config.model_dim) is int and type(config.mlp_dim) is int
    assert config.resolved_head_dim == 4
    assert _checks.head_sizes(12, 6, 2) == (2, 2, 2)
    assert _checks.head_sizes(12, 6, None, 5, 3) == (6, 5, 3)
    assert _checks.as_ints("heads", (1, np.int64(4))) == [1, 4]
    for bad in ((), (1, 0), (2, True), (1.0,)):
        with pytest.raises(ValueError, match=r"heads=\[.*\] must be a non-empty list of positive"):
            _checks.as_ints("heads", bad)
    with pytest.raises(ValueError, match="x must be an int >= 2, got 1"):
        _checks.as_int("x", 1, minimum=2)
    assert _checks.as_rate("p", np.float32(0.5)) == 0.5
    with pytest.raises(ValueError, match="eps must be a positive finite number, got nan"):
        _checks.as_positive_float("eps", float("nan"))
