"""Which heads carry a behaviour: ``uv run python -m experiments.interpret --workdir=DIR``.

``--workdir`` is a train run or a sweep (then every point matching ``--points``, default the
2-layer ones). For each run: loads the newest checkpoint, prints a table of every head's
zero-ablation effect on the induction task's loss next to its detector scores (previous-token,
duplicate-token, induction, copying), and writes ``interpret_<run>.png`` to ``--out``
(default: the workdir, else $ATTNJAX_RUNS/interpret). ``--minilm`` adds the bundled
all-MiniLM-L6-v2: the heads whose ablation most changes the similarity of "mole" across its
three senses (the sentences of ``experiments.patterns``).

  uv run python -m experiments.interpret --workdir=/tmp/sweep --points='h*_l2'
  uv run python -m experiments.interpret --minilm --out=/tmp/interpret
"""

from __future__ import annotations

import pathlib

from absl import flags

from attnjax import paths
from experiments.common import log_devices, run

MOLE_SENTENCES = ["American shrew mole", "One mole of carbon dioxide", "Take a biopsy of the mole"]
_WORKDIR = flags.DEFINE_string("workdir", None, "A train or sweep workdir to interpret.")
_POINTS = flags.DEFINE_string("points", "*_l2", "Sweep points (glob) to interpret.")
_OUT = flags.DEFINE_string("out", None, "Where PNGs go (default: --workdir).")
_BATCH = flags.DEFINE_integer("batch", 32, "Task examples the ablation effects average over.")
_MINILM = flags.DEFINE_bool("minilm", False, "Also ablate MiniLM's heads on 'mole'.")


def _runs(workdir: pathlib.Path) -> list[pathlib.Path]:
    if (workdir / "config.json").is_file():
        return [workdir]
    runs = sorted(p for p in workdir.glob(_POINTS.value) if (p / "checkpoints").is_dir())
    if not runs:
        raise ValueError(f"--workdir={workdir} holds no train run matching --points")
    return runs


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None and not _MINILM.value:
        raise ValueError("give --workdir (a train or sweep workdir), --minilm, or both")
    from attnjax.training.files import prepare_workdir

    runs = _runs(pathlib.Path(_WORKDIR.value).expanduser()) if _WORKDIR.value else []
    out = prepare_workdir(_OUT.value or _WORKDIR.value or paths.runs_dir("interpret"))
    log_devices()
    from attnjax.analysis import induction_report, word_ablation
    from attnjax.data import make_task
    from attnjax.training import load_trained_model
    from attnjax.viz.interventions import head_grids_plot

    for path in runs:
        model, config = load_trained_model(path)
        task = make_task(**config["task"])
        batch = task.batch(10_000, _BATCH.value)  # a step the run never trained on
        report = induction_report(model, batch.inputs, batch.targets, batch.loss_mask)
        print(f"\n{path.name}: task loss {report.clean:.3f} (ablation Δ = rise of the loss)")
        print(report.table())
        grids = {"ablation Δloss": report.ablation, **report.detectors.as_dict()}
        head_grids_plot(grids, out / f"interpret_{path.name}.png", title=path.name)
    if _MINILM.value:
        from attnjax import pretrained

        model, tokenizer = pretrained.load()
        result = word_ablation(model, tokenizer, MOLE_SENTENCES, "mole")
        print("\nMiniLM, heads whose ablation most changes 'mole' across senses:")
        print(result.table())
        head_grids_plot({"Δ similarity": result.effect}, out / "interpret_minilm.png")
    print(f"\nPNGs in {out}")


if __name__ == "__main__":
    run(main)
