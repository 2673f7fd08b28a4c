"""What attention heads do: their patterns on text, per-head scores, QK/OV circuits, and how
a word's contextual vector changes layer by layer.

Submodules: ``patterns`` (every layer's and head's pattern with token strings), ``scores``
(entropy, previous/first/self attention, induction), ``circuits`` (factored W_Q W_Kᵀ and
value-down · value-up per head, their singular values and effective rank), ``contextual``
(cosine similarity of one word's vectors across sentences, per layer), ``word`` (one word
across sentences: where it looks and how its vector moves, as one result with a summary),
``tiles`` (a head's pattern tile recomputed from the blocked path's log-sum-exp),
``interventions`` (capture, ablation/patching scans as compiled programs, attribution, logit
lens), ``detectors`` (previous-token, duplicate-token, induction, copying scores), ``planted``
(a hand-set induction circuit to test them on).
"""

from attnjax.analysis.circuits import (
    FactoredCircuit,
    attention_module,
    circuit_spectra,
    effective_rank,
    ov_circuit,
    qk_circuit,
    threshold_rank,
)
from attnjax.analysis.contextual import (
    ContextualSimilarity,
    contextual_similarity,
    cosine_similarity_by_layer,
    find_word,
    word_vectors,
)
from attnjax.analysis.detectors import (
    DETECTORS,
    HeadDetectors,
    copying_score,
    detect_heads,
    duplicate_token_score,
)
from attnjax.analysis.interventions import (
    PatchingResult,
    ablation_attribution,
    ablation_scan,
    attribution,
    direct_logit_attribution,
    logit_lens,
    mean_moved,
    patching_scan,
    run_with_cache,
)
from attnjax.analysis.patterns import (
    AttentionPatterns,
    decoder_patterns,
    encoder_patterns,
    patterns_from_encoded,
    text_patterns,
)
from attnjax.analysis.planted import PlantedCircuit, planted_induction_model
from attnjax.analysis.report import HeadReport, WordAblation, induction_report, word_ablation
from attnjax.analysis.scores import (
    HeadScores,
    first_token_score,
    head_entropy,
    head_scores,
    induction_score_from_patterns,
    induction_scores,
    previous_token_score,
    repeated_random_tokens,
    self_score,
)
from attnjax.analysis.tiles import pattern_tile
from attnjax.analysis.word import WordFocus, WordInContext, word_focus, word_in_context

__all__ = [
    "HeadReport",
    "WordAblation",
    "induction_report",
    "word_ablation",
    "DETECTORS",
    "HeadDetectors",
    "PatchingResult",
    "PlantedCircuit",
    "ablation_attribution",
    "ablation_scan",
    "attribution",
    "copying_score",
    "detect_heads",
    "direct_logit_attribution",
    "duplicate_token_score",
    "logit_lens",
    "mean_moved",
    "patching_scan",
    "planted_induction_model",
    "run_with_cache",
    "AttentionPatterns",
    "ContextualSimilarity",
    "FactoredCircuit",
    "HeadScores",
    "attention_module",
    "circuit_spectra",
    "contextual_similarity",
    "cosine_similarity_by_layer",
    "decoder_patterns",
    "effective_rank",
    "encoder_patterns",
    "find_word",
    "first_token_score",
    "head_entropy",
    "head_scores",
    "induction_score_from_patterns",
    "induction_scores",
    "ov_circuit",
    "pattern_tile",
    "patterns_from_encoded",
    "previous_token_score",
    "qk_circuit",
    "repeated_random_tokens",
    "self_score",
    "text_patterns",
    "threshold_rank",
    "word_focus",
    "word_in_context",
    "word_vectors",
    "WordFocus",
    "WordInContext",
]
