"""PyTorch peers: SDPA for the attention suite, nanoGPT's step for the train suite.

torch is optional (never an attnjax dependency): it is imported inside the functions that
need it, and :func:`torch_skip_reason` says why torch rows are left out.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable

import jax
import numpy as np

from attnjax.bench import memory, timing

__all__ = [
    "nanogpt_step",
    "prepare_sdpa_row",
    "torch_available",
    "torch_matmul_gflops",
    "torch_skip_reason",
]


@functools.cache
def torch_available() -> bool:
    """Whether torch imports (it is optional: never an attnjax dependency)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_skip_reason() -> str | None:
    """Why torch rows cannot run in this process (None when they can): torch missing, or JAX
    on an accelerator (torch rows run on the CPU only)."""
    if not torch_available():
        return "torch is not installed (pip install torch==2.13.0 for the CPU wheel)"
    if jax.default_backend() != "cpu":
        return "torch rows run on the CPU only (JAX is on an accelerator)"
    return None


def torch_matmul_gflops(size: int, repeats: int = 5) -> float:
    """Rate of a float32 ``[size, size] @ [size, size]`` ``torch.mm``, GFLOP/s (median of
    ``repeats`` calls after one warm-up)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    call = lambda: torch.mm(a, b)
    (samples,) = timing.interleaved_samples([timing.Contender("torch.mm", call)], repeats)
    return 2 * size**3 / statistics.median(samples.times) / 1e9


def _sdpa_backend(torch, q, k, v, causal: bool, gqa: bool) -> str:
    """The SDPA kernel torch picks for these inputs (private API; 'unknown' if it moves)."""
    try:
        from torch.nn.attention import SDPBackend

        choice = torch._fused_sdp_choice(q, k, v, is_causal=causal, enable_gqa=gqa)
        names = {int(getattr(SDPBackend, n)): n.lower() for n in dir(SDPBackend) if n.isupper()}
        return names.get(int(choice), str(choice))
    except (AttributeError, ImportError, RuntimeError, TypeError):
        return "unknown"


def _sdpa_call(q, k, v, mode: str, causal: bool, gqa: bool) -> Callable[[], object]:
    import torch
    from torch.nn import functional as F

    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    if mode == "fwd":

        def forward():
            with torch.no_grad():
                return sdpa()

        return forward
    for x in (q, k, v):
        x.requires_grad_(True)

    def forward_backward():
        for x in (q, k, v):
            x.grad = None
        sdpa().sum().backward()

    return forward_backward


def prepare_sdpa_row(case, qkv, mode: str, causal: bool) -> timing.Prepared:
    """One ``torch.nn.functional.scaled_dot_product_attention`` row on the CPU (torch's default
    threads): inputs are ``qkv`` (q [B, T, N, H], k, v [B, T, K, H]) as [B, N|K, T, H] torch
    tensors, ``is_causal``, ``enable_gqa``; forward under ``torch.no_grad()``, ``fwd_bwd``
    ``.sum().backward()``. The warm-up call is profiled for the peak of live tensor bytes (a
    few ms more; it is a sample only for calls longer than the budget)."""
    reason = torch_skip_reason()
    if reason:
        return timing.Prepared({"skipped": reason})
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[qkv[0].dtype.name]
    q, k, v = (
        torch.from_numpy(np.array(x, np.float32)).transpose(1, 2).contiguous().to(dtype)
        for x in qkv
    )  # [B, N|K, T, H]
    gqa = case.kv_heads != case.heads
    backend = _sdpa_backend(torch, q, k, v, causal, gqa)
    if case.grid_free_only and backend != "flash_attention":
        skipped = f"torch picks its {backend} kernel here, which builds the grid"
        return timing.Prepared({"skipped": skipped, "backend": backend})
    call = _sdpa_call(q, k, v, mode, causal, gqa)
    resident = sum(x.numel() * x.element_size() for x in (q, k, v))
    peak = []
    memory.start_torch_profiler()
    profiled = lambda: peak.append(memory.torch_peak_bytes(call, resident))
    fields = {"memory": "torch.profiler", "backend": backend}
    after = lambda: {"peak_bytes": peak[0]}
    return timing.Prepared(fields, timing.Contender("torch.sdpa", call, profiled), after)


def nanogpt_step(setting, tokens: np.ndarray):
    """nanoGPT's training step for a :class:`attnjax.bench.train.TrainSetting`: forward with
    loss, backward, clip the gradient norm to 1, AdamW step, ``zero_grad(set_to_none=True)``
    (its train.py), on the fixed batch ``tokens`` [B, T + 1].

    Returns ``(step, params)``: a no-argument function running one step, and the parameter
    count (tied weights counted once)."""
    import torch

    from attnjax.bench import torch_nanogpt

    torch.manual_seed(0)
    config = torch_nanogpt.GPTConfig(
        block_size=setting.seq_len,
        vocab_size=setting.vocab_size,
        n_layer=setting.num_layers,
        n_head=setting.num_heads,
        n_embd=setting.model_dim,
        dropout=0.0,
        bias=False,
    )
    model = torch_nanogpt.GPT(config)
    model.train()
    optimizer = model.configure_optimizers(
        weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.99), device_type="cpu"
    )
    batch = torch.from_numpy(tokens)
    x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def step():
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, int(sum(p.numel() for p in model.parameters()))
