"""A word in context on a real model: ``uv run python -m experiments.patterns``.

Defaults: the bundled all-MiniLM-L6-v2 and three senses of "mole" (animal, unit, skin).
Prints, per sentence and layer, the tokens the word attends to most and the heads that look
hardest at another word, then the cosine similarity of the word's vectors between sentences
layer by layer; writes PNGs (every layer and head, where the word looks, the similarity, the
QK/OV circuit spectra) to ``--workdir``; ``--html`` adds interactive pages (no network needed
to view them): a model view and a head view per sentence and the word-in-context view.

  uv run python -m experiments.patterns --word=bank \\
      --sentences='She sat on the river bank,He robbed the bank,The bank raised rates'
"""

from __future__ import annotations

from absl import flags

from attnjax import paths
from experiments.common import log_devices, run

MOLE_SENTENCES = ["American shrew mole", "One mole of carbon dioxide", "Take a biopsy of the mole"]

_SENTENCES = flags.DEFINE_list(
    "sentences", MOLE_SENTENCES, "Comma-separated sentences (quote one containing a comma)."
)
_WORD = flags.DEFINE_string("word", "mole", "The word to follow through the sentences.")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "A Hugging Face-format model directory (default: bundled MiniLM)."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the PNGs go (default: $ATTNJAX_RUNS/patterns)."
)
_HTML = flags.DEFINE_bool(
    "html", False, "Also write interactive HTML views (model, head, word in context)."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    from attnjax.training.loop import prepare_workdir

    # Before the model runs: fail fast if unwritable.
    workdir = prepare_workdir(_WORKDIR.value or paths.runs_dir("patterns"))
    log_devices()
    from attnjax import pretrained
    from attnjax.analysis import circuit_spectra, word_in_context
    from attnjax.viz.attention import circuit_spectra_plot, save_word_in_context_figures

    model, tokenizer = pretrained.load(_MODEL_DIR.value)
    result = word_in_context(model, tokenizer, _SENTENCES.value, _WORD.value)
    print(result.summary())
    figures = save_word_in_context_figures(result, workdir)
    spectra = workdir / "circuit_spectra.png"
    circuit_spectra_plot(circuit_spectra(model), path=spectra)
    print(f"wrote {len(figures) + 1} PNGs to {workdir}")
    if _HTML.value:
        from attnjax.viz.html import save_word_in_context_views

        pages = save_word_in_context_views(result, workdir)
        print(f"wrote {len(pages)} HTML views to {workdir}: {', '.join(p.name for p in pages)}")


if __name__ == "__main__":
    run(main)
