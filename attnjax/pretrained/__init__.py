"""Real pretrained models from Hugging Face-format directories (safetensors + tokenizer.json).

    from attnjax import pretrained
    model, tokenizer = pretrained.load()          # bundled all-MiniLM-L6-v2 (an Encoder)
    out = pretrained.encode(model, tokenizer, ["American shrew mole", "One mole of CO2"])
    out.patterns              # [L, B, N, T, T] every layer and head
    out.sentence_embeddings   # [B, D] mean-pooled, L2-normalized

``load(model_dir)`` also reads any downloaded BERT-family encoder or GPT-2-family decoder
(``model_type`` ``bert`` / ``gpt2``). No torch, no transformers, never pickle.
"""

from attnjax.pretrained.api import Encoded, encode, load, mean_pool, params_from_tree
from attnjax.pretrained.convert import SUPPORTED_MODEL_TYPES, convert_weights, model_config
from attnjax.pretrained.files import bundled_model_dir
from attnjax.pretrained.tokenizer import TokenBatch, Tokenizer

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "Encoded",
    "TokenBatch",
    "Tokenizer",
    "bundled_model_dir",
    "convert_weights",
    "encode",
    "load",
    "mean_pool",
    "model_config",
    "params_from_tree",
]
