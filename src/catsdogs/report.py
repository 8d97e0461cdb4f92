"""The Markdown report of an evaluation (``report.md``) and the plain-text metrics summary."""

from __future__ import annotations

import os

from catsdogs.budget import BudgetPlan
from catsdogs.config import TrainConfig
from catsdogs.data.scan import ScanResult, summary_lines
from catsdogs.io import atomic_write_text
from catsdogs.runfolder import (
    CONFUSION_PLOT,
    HISTORY_PLOT,
    LOGS_DIR,
    MISTAKES_PLOT,
    OOD_PLOT,
    PLOTS_DIR,
    REPORT_FILE,
    ROC_PLOT,
    SAMPLES_PLOT,
    run_file,
    validated_rows,
)


def format_metrics(m: dict, title: str = "") -> str:
    """A short plain-text summary of :func:`catsdogs.evaluate.compute_metrics` output."""
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
    cm = m["confusion_matrix"]
    return (f"{title}: n={m['n']}  accuracy={m['accuracy']:.4f}  precision={m['precision']:.4f}  "
            f"recall={m['recall']:.4f}  F1={m['f1']:.4f}  ROC AUC={auc}\n"
            f"  confusion matrix (rows true cat/dog, columns predicted): {cm}")


def _plot(name: str) -> str:
    """A plot's path relative to the report: ``plots/<name>``."""
    return f"{PLOTS_DIR}/{name}"


def _precision_reason(cfg: TrainConfig) -> str:
    """Why the run trained in its precision, when it chose (``precision="auto"`` timed)."""
    choice = cfg.precision_choice
    return f" ({choice['reason']})" if choice.get("step_seconds") else ""


def _settings_lines(cfg: TrainConfig, m: dict) -> list[str]:
    """What was trained and how it was evaluated."""
    src = m["source"]
    where = (f"the run's test split ({m['n']} photos, read once)" if "split" in src
             else f"every readable photo in `{src['folder']}` ({m['n']} photos, "
                  f"{src['skipped_files']} files skipped)")
    flips = ("; P(dog) averaged over each photo and its mirror image (test-time flips)"
             if m.get("test_time_flips") else "")
    trained_at = (f" (trained at {' → '.join(f'{s} px' for s in cfg.train_sizes)})"
                  if cfg.train_sizes else "")
    length = (f"a {cfg.time_budget:g}-minute time budget" if cfg.time_budget
              else f"{cfg.epochs} epochs")
    if cfg.weights not in ("", "none"):
        stages = (f" ({cfg.head_epochs} of them head only, then the top "
                  f"{cfg.fine_tune_fraction:.0%} of the backbone at ×{cfg.fine_tune_lr_factor:g}"
                  f" the learning rate)" if cfg.head_epochs else "")
        length += f"{stages}, starting from weights `{os.path.basename(cfg.weights)}`"
    fitted = ("too few epochs" if cfg.own_recipe_epochs is None else
              f"only {cfg.own_recipe_epochs:.1f} epochs, fewer than {cfg.short_budget_epochs:g},")
    recipe = (f" with the `{cfg.budget_recipe}` recipe ({fitted} fitted the budget at the "
              f"preset's own sizes)" if cfg.budget_recipe else "")
    return [f"Preset `{cfg.preset}`{recipe}: model `{cfg.model}` at "
            f"{cfg.image_size}×{cfg.image_size} px{trained_at}, {length}, batch "
            f"{cfg.batch_size}, {cfg.optimizer} "
            f"lr {cfg.learning_rate} ({cfg.schedule}), augmentation `{cfg.augmentation}`, "
            f"seed {cfg.seed}, {cfg.precision} compute{_precision_reason(cfg)}.", "",
            f"Evaluated on {where}; dog is the positive class, threshold {m['threshold']}{flips}."]


def _metrics_lines(m: dict) -> list[str]:
    """The metrics table and the per-class table."""
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
    lines = ["| metric | value |", "| --- | --- |",
             f"| accuracy | {m['accuracy']:.4f} |", f"| precision | {m['precision']:.4f} |",
             f"| recall | {m['recall']:.4f} |", f"| F1 | {m['f1']:.4f} |",
             f"| ROC AUC | {auc} |", "",
             "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    for name, v in m["per_class"].items():
        lines.append(f"| {name} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | "
                     f"{v['support']} |")
    return lines


def _history_lines(history: list[dict], run_name: str) -> list[str]:
    """How training went, the curves, and how to open the TensorBoard logs."""
    validated = validated_rows(history)
    text = (f"Trained {len(history)} epochs in {float(history[-1]['elapsed']) / 60:.1f} "
            f"minutes, validated after {len(validated)} of them")
    if validated:
        best = min(validated, key=lambda r: float(r["val_loss"]))
        text += (f"; best validation loss {float(best['val_loss']):.4f} at epoch "
                 f"{best['epoch']} (validation accuracy {float(best['val_accuracy']):.4f}); "
                 "those weights are the saved model")
    return ["", text + ".", "", "## Training curves", "",
            f"![training curves]({_plot(HISTORY_PLOT)})", "",
            f"TensorBoard logs (loss, accuracy and learning rate per epoch) are in "
            f"`{LOGS_DIR}/`; open them with `tensorboard --logdir {run_name}/{LOGS_DIR}`."]


def budget_lines(plan: BudgetPlan, timings: dict | None = None) -> list[str]:
    """The "Time budget" section: measured throughput, planned and actual steps, and (with
    ``timings``, :func:`catsdogs.runfolder.write_timings`) the whole command's time."""
    rates = ", ".join(f"{s} px: {plan.batch_size / t:.0f}" for s, t in plan.step_seconds.items())
    spe = plan.steps_per_epoch
    lines = ["", "## Time budget", "",
             f"Budget {plan.budget_seconds / 60:g} min for the whole `train` command. Training "
             f"photos/s measured at the start: {rates}. Planned {plan.planned_steps} optimizer "
             f"steps ({plan.planned_steps / spe:.1f} epochs); trained {plan.steps_done} "
             f"({plan.steps_done / spe:.1f} epochs), the learning rate reaching 0 at the last "
             f"one; last speed {plan.speed:.2f}× the measured one. Training ended "
             f"{plan.spent_seconds / 60:.1f} min into the budget, {plan.reserve_seconds:.0f} s "
             f"kept for the evaluation."]
    if timings and "budget" in timings:
        used, left = timings["budget"]["used_seconds"], timings["budget"]["left_seconds"]
        lines += ["", f"Whole command: {used / 60:.1f} min, "
                      f"{abs(left):.0f} s {'left' if left >= 0 else 'over budget'}."]
    return lines


def _rejection_lines(ood: dict) -> list[str]:
    """The "neither a cat nor a dog" section: method, threshold, one table row per group."""
    threshold = ood["threshold"]
    rule = ("none saved (older run): nothing is rejected" if threshold is None
            else f"OOD score above {threshold:.4f}, chosen on the validation split to keep "
                 f"{ood['keep_pets']:.0%} of the cats and dogs")
    lines = ["", "## Neither a cat nor a dog", "",
             f"Method: {ood['method']}. OOD score 1 − |2·P(dog) − 1|; rejection threshold: "
             f"{rule}.", "",
             "| other photos | n | AUROC | FPR at 95 % TPR | rejected | cats and dogs rejected |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, g in ood["groups"].items():
        lines.append(f"| {name} | {g['n_other']} | {g['auroc']:.4f} | {g['fpr_at_95_tpr']:.4f} "
                     f"| {g['other_rejected']:.1%} | {g['pets_rejected']:.1%} |")
    return lines + ["", f"![OOD score histograms]({_plot(OOD_PLOT)})"]


def write_report(out_dir: str, cfg: TrainConfig, m: dict, history: list[dict],
                 scan: ScanResult | None = None, plan: BudgetPlan | None = None,
                 timings: dict | None = None) -> None:
    """Write ``report.md`` into ``out_dir``: settings, metrics tables, training curves (when
    ``history`` is given), the time budget (``plan``, with the command's ``timings`` once
    known), the scan summary (when ``scan`` is given) and the plots."""
    run_name = os.path.basename(os.path.abspath(cfg.out or out_dir))
    lines = [f"# catsdogs report: `{run_name}`", "", *_settings_lines(cfg, m), "",
             *_metrics_lines(m)]
    if history:
        lines += _history_lines(history, cfg.out or out_dir)
    if plan is not None:
        lines += budget_lines(plan, timings)
    if "ood" in m:
        lines += _rejection_lines(m["ood"])
    if scan is not None:
        lines += ["", "## Data", "", "```", *summary_lines(scan)[:60], "```"]
    lines += ["", "## Confusion matrix and ROC curve", "",
              f"![confusion matrix]({_plot(CONFUSION_PLOT)}) ![ROC curve]({_plot(ROC_PLOT)})",
              "", "## Sample predictions", "", f"![samples]({_plot(SAMPLES_PLOT)})", "",
              "## Most confident mistakes", "", f"![mistakes]({_plot(MISTAKES_PLOT)})", ""]
    atomic_write_text(run_file(out_dir, REPORT_FILE), "\n".join(lines))
