"""``"xla"`` and ``"cudnn"``: ``jax.nn.dot_product_attention``'s two implementations.

Both need R = H and one dtype for query, key and value. ``"cudnn"`` builds causal, padding
and window masks itself (no ``[T, S]`` tensor); its limits are those of
``jax.nn.dot_product_attention(implementation="cudnn")``, checked before JAX sees the call.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from attnjax.functional.backends.base import Backend, grid_too_big
from attnjax.functional.call import Call, Result

_CUDNN_DTYPES = (jnp.float16, jnp.bfloat16)
_CUDNN_MAX_HEAD_WIDTH = 256  # 128 before Hopper (compute capability 9.0)


def _jax_nn_unsupported(call: Call) -> str | None:
    query, key, value = call.query, call.key, call.value
    if value.shape[-1] != query.shape[-1]:
        return f"value width R={value.shape[-1]} differs from query/key width H={query.shape[-1]}"
    if not query.dtype == key.dtype == value.dtype:
        return f"query, key and value dtypes differ ({query.dtype}, {key.dtype}, {value.dtype})"
    return None


def _xla_unsupported(call: Call) -> str | None:
    return _jax_nn_unsupported(call) or grid_too_big(call)


def _cudnn_unsupported(call: Call) -> str | None:
    unsupported = _jax_nn_unsupported(call)
    if unsupported:
        return unsupported
    width, dtype = call.query.shape[-1], call.query.dtype
    if dtype not in _CUDNN_DTYPES:
        return f"query dtype {dtype} (cudnn supports float16 and bfloat16)"
    if width % 8 or width > _max_cudnn_width():
        return (
            f"head width H={width} (query {call.query.shape}); cudnn needs a multiple of 8, "
            f"at most {_max_cudnn_width()} on this GPU (128 before Hopper)"
        )
    window = call.masking.window
    if window is not None and window[1] > 0 and not call.masking.is_causal:
        return (
            f"local_window_size={window} with is_causal=False (cudnn supports left windows "
            "(left, 0), or any window together with is_causal=True)"
        )
    if not cudnn_available():
        return (
            "cuDNN is not detected (it needs an NVIDIA GPU or, to compile for one, the CUDA plugin)"
        )
    return None


def _odd_lengths(call: Call) -> str | None:
    """Not chosen automatically for odd T or S: jax's cudnn gradient treats every call as
    biased and refuses odd lengths then (the forward pass runs)."""
    if call.q_len % 2 or call.k_len % 2:
        return f"T={call.q_len}, S={call.k_len} (cudnn's backward needs both even)"
    return None


@functools.cache
def cudnn_available() -> bool:
    """Whether ``jax.nn``'s cuDNN attention can be traced in this process."""
    x = jax.ShapeDtypeStruct((1, 128, 1, 64), jnp.bfloat16)
    try:
        jax.eval_shape(lambda q: jax.nn.dot_product_attention(q, q, q, implementation="cudnn"), x)
    except (RuntimeError, NotImplementedError, ValueError):
        return False
    return True


def _max_cudnn_width() -> int:
    """256 from Hopper on (and when no GPU is attached: a deviceless compile), else 128."""
    gpus = [d for d in jax.devices() if d.platform == "gpu"] if _has_gpu() else []
    capability = getattr(gpus[0], "compute_capability", "9.0") if gpus else "9.0"
    before_hopper = tuple(int(x) for x in str(capability).split(".")[:2]) < (9, 0)
    return 128 if before_hopper else _CUDNN_MAX_HEAD_WIDTH


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def _xla(call: Call) -> Result:
    mask = call.masking.full_mask(call.q_len, call.k_len)
    out, residual = jax.nn.dot_product_attention(
        call.query,
        call.key,
        call.value,
        call.masking.bias,
        mask=mask,
        scale=call.scale,
        implementation="xla",
        return_residual=True,
    )
    return _zero_rows_without_keys(call, out, mask, residual)


def _cudnn(call: Call) -> Result:
    masking = call.masking
    is_causal, window = masking.is_causal, masking.window
    if window is not None:
        # cudnn takes left windows only; with is_causal any right part is masked anyway, and
        # a (left, 0) window already implies causal, so pass both as causal + (left, 0).
        is_causal, window = True, (window[0], 0)
    # Lengths and the causal window are cudnn's own; segment ids and the mask go as a mask.
    rest = dataclasses.replace(masking, is_causal=False, window=None)
    mask = rest.full_mask(call.q_len, call.k_len) if _has_array_mask(masking) else None
    full = (call.q_len, call.k_len)  # cudnn needs mask and bias with full [T, S] axes
    bias = None if masking.bias is None else masking.bias.astype(call.query.dtype)
    mask, bias = (
        None if x is None else jnp.broadcast_to(x, x.shape[:2] + full) for x in (mask, bias)
    )
    try:
        out, residual = jax.nn.dot_product_attention(
            call.query,
            call.key,
            call.value,
            bias,
            mask,
            scale=call.scale,
            is_causal=is_causal,
            local_window_size=window,
            query_seq_lengths=masking.query_lengths,
            key_value_seq_lengths=masking.key_lengths,
            implementation="cudnn",
            return_residual=True,
        )
    except NotImplementedError as error:  # checks that need the GPU (e.g. odd T, S with bias)
        raise ValueError(
            f"implementation='cudnn' does not support this call: {error}; use implementation='xla'"
        ) from error
    return _zero_rows_without_keys(call, out, masking.full_mask(call.q_len, call.k_len), residual)


def _has_array_mask(masking) -> bool:
    return masking.mask is not None or masking.query_segment_ids is not None


def _zero_rows_without_keys(call: Call, out, mask, residual) -> Result:
    """jax.nn averages all values for a row with no allowed key; define it as zeros (lse
    -inf). ``residual`` is jax.nn's ``[B, T, N]`` log-sum-exp (key dtype)."""
    lse = jnp.swapaxes(residual, 1, 2).astype(jnp.float32)
    if mask is None:
        return Result(out, lse=lse if call.return_lse else None)
    has_keys = jnp.broadcast_to(jnp.any(mask, axis=-1), call.grid_shape[:3])  # [B, N, T]
    out = jnp.where(jnp.swapaxes(has_keys, 1, 2)[..., None], out, 0).astype(out.dtype)
    lse = jnp.where(has_keys, lse, -jnp.inf)
    return Result(out, lse=lse if call.return_lse else None)


XLA = Backend(
    name="xla",
    run=_xla,
    unsupported=_xla_unsupported,
    gives_lse=True,
)
CUDNN = Backend(
    name="cudnn",
    run=_cudnn,
    unsupported=_cudnn_unsupported,
    not_automatic=_odd_lengths,
    gives_lse=True,
    platforms=("cuda",),
    instead="'xla', 'blocked' or 'einsum'",
)
