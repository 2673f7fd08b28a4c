"""Independent float64 NumPy reference of masked multi-head attention (no JAX)."""

import numpy as np


def numpy_attention(query, key, value, mask=None, bias=None, scale=None):
    """query [B,T,N,H], key [B,S,K,H], value [B,S,K,R]; mask/bias broadcast to [B,N,T,S].

    Returns (out [B,T,N,R], pattern [B,N,T,S]) in float64. Rows with no allowed key are zeros.
    """
    q, k, v = (np.asarray(x, np.float64) for x in (query, key, value))
    batch, q_len, num_heads, width = q.shape
    k_len, num_kv = k.shape[1], k.shape[2]
    group = num_heads // num_kv
    scale = 1.0 / np.sqrt(width) if scale is None else scale
    full = (batch, num_heads, q_len, k_len)
    allowed = np.ones(full, bool) if mask is None else np.broadcast_to(np.asarray(mask), full)
    add = np.zeros(full) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), full)
    out = np.zeros((batch, q_len, num_heads, v.shape[-1]))
    pattern = np.zeros(full)
    for b in range(batch):
        for n in range(num_heads):
            kv = n // group
            for t in range(q_len):
                keys = [
                    s for s in range(k_len) if allowed[b, n, t, s] and add[b, n, t, s] > -np.inf
                ]
                if not keys:
                    continue
                logits = np.array(
                    [q[b, t, n] @ k[b, s, kv] * scale + add[b, n, t, s] for s in keys]
                )
                weights = np.exp(logits - logits.max())
                weights /= weights.sum()
                pattern[b, n, t, keys] = weights
                out[b, t, n] = weights @ v[b, keys, kv]
    return out, pattern
