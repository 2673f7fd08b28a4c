"""Analytic parameter counts of a ``ModelConfig``: per head, per layer, per model.

Two conventions:

``"full"``
    Every parameter of the model as instantiated (``DecoderLM`` or ``Encoder``): weights,
    biases, norm scales/biases, learned position and token-type embeddings; with
    ``tie_embeddings`` the unembedding is the token embedding and counts 0.
``"3b1b"``
    The weights-only tally of 3Blue1Brown's GPT-3 video: embedding (token, V x D), key, query,
    value, output, up-projection, down-projection, unembedding (D x V, counted as untied even
    when tied; 0 for an encoder, which has none). No biases, norms, position or token-type
    embeddings. For GPT-3 175B this is 175,181,291,520.

Categories (both conventions): ``attention`` = the four weight maps only (query [D,N,H],
key [D,K,H], value-down [D,K,R], value-up [N,R,D]); ``mlp`` = the two kernels; ``biases`` =
attention + MLP biases (reported separately: ``attention_biases``, ``mlp_biases``); ``norms`` =
every norm's scale and bias (blocks, final, embedding); ``embedding`` = token + position +
token-type tables; ``unembedding``. ``total`` is their sum and ``non_embedding = total -
embedding - unembedding``. An ``attention_only`` model has no MLP: ``mlp`` and ``mlp_biases``
are 0 and each block has one norm (the attention's), not two.

``unembedding == 0`` has two meanings, told apart by ``unembedding_kind``: ``"tied"`` (a decoder
whose unembedding is the token embedding, ``"full"`` convention) or ``"none"`` (an encoder, which
has no unembedding); ``"separate"`` is a D x V matrix of its own (or counted as one, ``"3b1b"``).

The attention width ``N*H`` usually equals D but need not: GPT-3 13B has 40 heads of 128 = 5120
for D = 5140. ``attention_width`` reports it and the table flags ``N x H != D``.

Per head (``HeadParams``): query = D*H, key = D*H, value_down = D*R, value_up = R*D. With
grouped-query attention (K < N) one key map and one value-down map serve G = N/K query heads,
so ``per_head.total`` is the size of one head *as if it had its own* key and value maps, and
the attention weights of one layer are exactly ``N*(query + value_up) + K*(key + value_down)``
(= ``N * per_head.total`` only when K = N).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from attnjax.models.config import ModelConfig

__all__ = [
    "CONVENTIONS",
    "EmbeddingParams",
    "HeadParams",
    "LayerParams",
    "ParamReport",
    "count_params",
    "format_param_table",
]

CONVENTIONS = ("full", "3b1b")


@dataclasses.dataclass(frozen=True)
class HeadParams:
    """Weights of one attention head: W_Q [D,H], W_K [D,H], W_V-down [D,R], W_V-up [R,D]."""

    query: int
    key: int
    value_down: int
    value_up: int

    @property
    def total(self) -> int:
        return self.query + self.key + self.value_down + self.value_up

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}


@dataclasses.dataclass(frozen=True)
class LayerParams:
    """One transformer block: attention weights, MLP kernels, its two norms, its biases."""

    attention: int
    mlp: int
    norms: int
    attention_biases: int
    mlp_biases: int

    @property
    def biases(self) -> int:
        return self.attention_biases + self.mlp_biases

    @property
    def total(self) -> int:
        return self.attention + self.mlp + self.norms + self.biases

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "biases": self.biases, "total": self.total}


@dataclasses.dataclass(frozen=True)
class EmbeddingParams:
    """Input tables: token [V,D], learned position [max_seq_len,D], token type [types,D]."""

    token: int
    position: int
    token_type: int

    @property
    def total(self) -> int:
        return self.token + self.position + self.token_type

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}


@dataclasses.dataclass(frozen=True)
class ParamReport:
    """Parameter counts of one model under one convention (see the module docstring)."""

    convention: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    model_dim: int
    head_dim: int
    value_dim: int
    mlp_dim: int
    vocab_size: int
    tied_embeddings: bool
    per_head: HeadParams
    per_layer: LayerParams
    embeddings: EmbeddingParams
    unembedding: int
    other_norms: int  # final norm + embedding norm (outside the blocks)
    architecture: str = "decoder"

    @property
    def embedding(self) -> int:
        return self.embeddings.total

    @property
    def attention(self) -> int:
        return self.num_layers * self.per_layer.attention

    @property
    def mlp(self) -> int:
        return self.num_layers * self.per_layer.mlp

    @property
    def norms(self) -> int:
        return self.num_layers * self.per_layer.norms + self.other_norms

    @property
    def attention_biases(self) -> int:
        return self.num_layers * self.per_layer.attention_biases

    @property
    def mlp_biases(self) -> int:
        return self.num_layers * self.per_layer.mlp_biases

    @property
    def biases(self) -> int:
        return self.attention_biases + self.mlp_biases

    @property
    def total(self) -> int:
        return (
            self.embedding + self.unembedding + self.attention + self.mlp + self.norms
            + self.biases
        )  # fmt: skip

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding - self.unembedding

    @property
    def unembedding_kind(self) -> str:
        """``"separate"``, ``"tied"`` (= token embedding, counts 0) or ``"none"`` (encoder)."""
        if self.architecture != "decoder":
            return "none"
        return "separate" if self.unembedding else "tied"

    @property
    def attention_width(self) -> int:
        """N * H: the width of the concatenated query heads (usually, not always, D)."""
        return self.num_heads * self.head_dim

    @property
    def kv_groups(self) -> int:
        """G = N / K query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    def categories(self) -> dict[str, int]:
        """Totals by category; they sum to ``total`` (what ``reconcile`` compares)."""
        return {
            "embedding/token": self.embeddings.token,
            "embedding/position": self.embeddings.position,
            "embedding/token_type": self.embeddings.token_type,
            "attention": self.attention,
            "attention_biases": self.attention_biases,
            "mlp": self.mlp,
            "mlp_biases": self.mlp_biases,
            "norms": self.norms,
            "unembedding": self.unembedding,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every count."""
        return {
            "convention": self.convention,
            "architecture": self.architecture,
            "total": self.total,
            "non_embedding": self.non_embedding,
            "embedding": self.embedding,
            "unembedding": self.unembedding,
            "unembedding_kind": self.unembedding_kind,
            "attention": self.attention,
            "mlp": self.mlp,
            "norms": self.norms,
            "biases": self.biases,
            "attention_biases": self.attention_biases,
            "mlp_biases": self.mlp_biases,
            "per_head": self.per_head.to_dict(),
            "per_layer": self.per_layer.to_dict(),
            "embeddings": self.embeddings.to_dict(),
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "kv_groups": self.kv_groups,
            "model_dim": self.model_dim,
            "head_dim": self.head_dim,
            "attention_width": self.attention_width,
            "value_dim": self.value_dim,
            "mlp_dim": self.mlp_dim,
            "vocab_size": self.vocab_size,
            "tied_embeddings": self.tied_embeddings,
        }

    def scalars(self) -> dict[str, int]:
        """Flat ``{"params/<name>": int}`` for metric logs (``params/total``, ...)."""
        values = {
            "total": self.total,
            "attention": self.attention,
            "per_head": self.per_head.total,
            "per_layer": self.per_layer.total,
            "mlp": self.mlp,
            "embedding": self.embedding,
            "unembedding": self.unembedding,
            "non_embedding": self.non_embedding,
            "norms": self.norms,
            "biases": self.biases,
        }
        return {f"params/{name}": int(value) for name, value in values.items()}


def count_params(config: ModelConfig, convention: str = "full") -> ParamReport:
    """The parameter counts of ``config``'s model (``DecoderLM`` or ``Encoder``).

    ``convention``: ``"full"`` (every parameter as instantiated) or ``"3b1b"`` (weights only,
    untied unembedding); see the module docstring.
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r} is unknown; choose one of {list(CONVENTIONS)}")
    d, n, k = config.model_dim, config.num_heads, config.resolved_num_kv_heads
    h, r, f, v = (
        config.resolved_head_dim,
        config.resolved_value_dim,
        config.resolved_mlp_dim,
        config.vocab_size,
    )
    head = HeadParams(query=d * h, key=d * h, value_down=d * r, value_up=r * d)
    attention = n * (head.query + head.value_up) + k * (head.key + head.value_down)
    full = convention == "full"
    norm = _norm_size(config) if full else 0
    layer = LayerParams(
        attention=attention,
        mlp=2 * d * f,  # f = 0 for an attention-only model
        norms=(1 if config.attention_only else 2) * norm,
        attention_biases=(n * h + k * h + k * r + d) if full and config.attention_bias else 0,
        mlp_biases=(f + d) if full and config.mlp_bias and not config.attention_only else 0,
    )
    decoder = config.architecture == "decoder"
    embeddings = EmbeddingParams(
        token=v * d,
        position=config.max_seq_len * d if full and config.position_embedding == "learned" else 0,
        token_type=config.type_vocab_size * d if full else 0,
    )
    untied = decoder and (not config.tie_embeddings or not full)
    return ParamReport(
        convention=convention,
        num_layers=config.num_layers,
        num_heads=n,
        num_kv_heads=k,
        model_dim=d,
        head_dim=h,
        value_dim=r,
        mlp_dim=f,
        vocab_size=v,
        tied_embeddings=config.tie_embeddings,
        per_head=head,
        per_layer=layer,
        embeddings=embeddings,
        unembedding=d * v if untied else 0,
        other_norms=norm * (int(config.final_norm) + int(config.embedding_norm)),
        architecture=config.architecture,
    )


def _norm_size(config: ModelConfig) -> int:
    """LayerNorm: scale (+ bias if ``norm_bias``); RMSNorm: scale only."""
    with_bias = config.norm == "layernorm" and config.norm_bias
    return config.model_dim * (2 if with_bias else 1)


def format_param_table(report: ParamReport) -> str:
    """A readable table: the per-head view first, then per layer and per model."""
    d, h, r = report.model_dim, report.head_dim, report.value_dim
    n, k, layers = report.num_heads, report.num_kv_heads, report.num_layers
    head = report.per_head
    rows: list[tuple[str, str, int | str]] = [
        ("== one attention head ==", "", ""),
        ("W_Q (query)", f"{d} x {h}", head.query),
        ("W_K (key)", f"{d} x {h}", head.key),
        ("W_V down (value-down)", f"{d} x {r}", head.value_down),
        ("W_V up (value-up)", f"{r} x {d}", head.value_up),
        ("per head", "", head.total),
    ]
    if report.attention_width != d:
        rows.append((f"note: attention width N x H = {n} x {h} = {n * h} != D = {d}", "", ""))
    if k == n:
        rows.append((f"x {n} heads x {layers} layers", "attention weights", report.attention))
    else:
        rows.append(
            (
                f"GQA: {n} query heads share {k} key/value heads (G={report.kv_groups})",
                "", "",
            )
        )  # fmt: skip
        rows.append(
            (
                f"{layers} x ({n} x (W_Q+W_V up) + {k} x (W_K+W_V down))",
                "attention weights",
                report.attention,
            )
        )
    layer = report.per_layer
    rows += [
        (f"== one layer (of {layers}) ==", "", ""),
        ("attention weights", "", layer.attention),
        ("MLP kernels", f"{d} x {report.mlp_dim} x 2", layer.mlp),
        ("norms", "", layer.norms),
        ("biases (attention + MLP)", "", layer.biases),
        ("per layer", "", layer.total),
        (f"== model ({report.convention} convention) ==", "", ""),
        ("token embedding", f"{report.vocab_size} x {d}", report.embeddings.token),
        ("position embedding", "", report.embeddings.position),
        ("token-type embedding", "", report.embeddings.token_type),
        ("attention weights", f"{layers} layers", report.attention),
        ("attention biases", "", report.attention_biases),
        ("MLP kernels", f"{layers} layers", report.mlp),
        ("MLP biases", "", report.mlp_biases),
        ("norms", "", report.norms),
        ("unembedding", _unembedding_shape(report), report.unembedding),
        ("non-embedding", "", report.non_embedding),
        ("total", "", report.total),
    ]  # fmt: skip
    width = max(len(name) for name, _, value in rows if value != "")  # notes may overhang
    shape_width = max(len(shape) for _, shape, _ in rows)
    lines = []
    for name, shape, value in rows:
        count = f"{value:>18,}" if isinstance(value, int) else ""
        lines.append(f"{name:<{width}}  {shape:<{shape_width}}  {count}".rstrip())
    return "\n".join(lines)


def _unembedding_shape(report: ParamReport) -> str:
    kind = report.unembedding_kind
    if kind == "none":
        return "none (encoder)"
    if kind == "tied":
        return "tied (= token embedding)"
    untied = " (counted untied)" if report.tied_embeddings else ""
    return f"{report.model_dim} x {report.vocab_size}{untied}"
