""""Neither a cat nor a dog" for a run: choose the rejection threshold on the validation split,
and measure it on photos of other kinds (the run's own other photos, the held-out kind,
synthetic outliers, or any folder).

The score and the metrics are :mod:`catsdogs.ood`'s; this module feeds them a run's photos.
"""

from __future__ import annotations

import os

import numpy as np

from catsdogs import plots
from catsdogs.config import TrainConfig
from catsdogs.data.outliers import (
    SYNTHETIC_KINDS,
    UNSEEN_SYNTHETIC,
    load_other_split,
    scan_other,
    synthetic_outliers,
)
from catsdogs.data.split import load_split, select
from catsdogs.errors import display_path
from catsdogs.ood import KEEP_PETS, choose_threshold, ood_metrics, ood_score
from catsdogs.predict import Predictor, classify_files
from catsdogs.runfolder import (
    CONFIG_FILE,
    METRICS_FILE,
    OOD_PLOT,
    OTHER_SPLITS_FILE,
    PLOTS_DIR,
    SPLITS_FILE,
    eval_dir,
    read_json,
    run_file,
    write_json,
)

N_SYNTHETIC_TEST = 400
"""Synthetic outliers of each test group (seen families, and the unseen one)."""


def method(cfg: TrainConfig) -> str:
    """How the run tells other photos apart: a pet head trained with other photos, or the
    max-softmax baseline."""
    return ("pet head: P(pet) from a second logit trained on the other photos (plus outlier "
            "exposure on P(dog))" if cfg.other
            else "max-softmax baseline (trained without other photos)")


def calibrate(run: str, predictor: Predictor, progress: bool = True) -> float:
    """Choose the rejection threshold on the run's validation cats and dogs (to keep
    :data:`~catsdogs.ood.KEEP_PETS` of them), with ``predictor``'s test-time flips, and save it
    in ``config.json`` (``inference.ood_threshold``).

    Returns:
        The threshold.

    Raises:
        RunError: no ``splits.csv``. ValueError: an empty validation split.
    """
    paths, _ = select(load_split(run_file(run, SPLITS_FILE)), "val")
    scores = ood_score(classify_files(predictor, paths, progress, desc="calibrate"))
    threshold = choose_threshold(scores, KEEP_PETS)
    cfg = TrainConfig.load(run)
    cfg.inference.ood_threshold = threshold
    cfg.save(run, versions=(read_json(run_file(run, CONFIG_FILE)) or {}).get("versions"))
    predictor.ood_threshold = threshold
    print(f"Rejection threshold: OOD score above {threshold:.4f} is 'other' (keeps "
          f"{KEEP_PETS:.0%} of {len(paths)} validation cats and dogs)")
    return threshold


def _groups(run: str, cfg: TrainConfig, predictor: Predictor, progress: bool
            ) -> dict[str, np.ndarray]:
    """OOD scores of each group of other test photos: the run's other test photos (seen kinds),
    its held-out kind, and synthetic outliers of the trained and the unseen families."""
    groups: dict[str, np.ndarray] = {}
    examples = load_other_split(run_file(run, OTHER_SPLITS_FILE))
    for split, name in (("test", "other photos, kinds seen in training"),
                        ("unseen", "other photos, held-out kind")):
        rows = [e for e in examples if e.split == split]
        if rows:
            kinds = ", ".join(sorted({e.kind for e in rows}))
            probs = classify_files(predictor, [e.path for e in rows], progress, desc=split)
            groups[f"{name} ({kinds})"] = ood_score(probs)
    size, seed = cfg.image_size, cfg.seed + 1  # not the training outliers' seed
    trained = tuple(k for k in SYNTHETIC_KINDS if k != UNSEEN_SYNTHETIC)
    for kinds, name in ((trained, "synthetic, trained families"),
                        ((UNSEEN_SYNTHETIC,), f"synthetic, unseen family ({UNSEEN_SYNTHETIC})")):
        images = synthetic_outliers(N_SYNTHETIC_TEST, size, seed, kinds)
        groups[name] = ood_score(predictor.outputs_prepared(images))
    return groups


def evaluate_rejection(run: str, cfg: TrainConfig, predictor: Predictor,
                       pet_outputs: np.ndarray, plot_dir: str, progress: bool = True) -> dict:
    """Rejection metrics on the test split: the test cats and dogs (``pet_outputs``, the model
    outputs of :func:`catsdogs.predict.classify_files`) against every group of other photos;
    draws ``ood.png`` into ``plot_dir``.

    Returns:
        ``{"method", "threshold", "keep_pets", "groups": {name: ood_metrics(...)}}``.
    """
    pets = ood_score(pet_outputs)
    groups = _groups(run, cfg, predictor, progress)
    plots.plot_ood({"cats and dogs (test)": pets, **groups}, predictor.ood_threshold,
                   run_file(plot_dir, OOD_PLOT))
    return {"method": method(cfg), "threshold": predictor.ood_threshold, "keep_pets": KEEP_PETS,
            "groups": {name: ood_metrics(pets, scores, predictor.ood_threshold)
                       for name, scores in groups.items()}}


def evaluate_other_folder(run: str, other: str, predictor: Predictor, progress: bool = True
                          ) -> dict:
    """Rejection metrics of every readable photo in the folder ``other`` against the run's
    test cats and dogs; writes ``metrics.json`` (``{"ood": …, "source": …}``) and
    ``plots/ood.png`` into ``RUN/eval-<name>/``.

    Raises:
        DataError: ``other`` is not a folder or holds no readable photo.
    """
    photos, skipped = scan_other(other, progress=progress)
    pet_paths, _ = select(load_split(run_file(run, SPLITS_FILE)), "test")
    pets = ood_score(classify_files(predictor, pet_paths, progress, desc="pets"))
    scores = ood_score(classify_files(predictor, [p.path for p in photos], progress,
                                      desc="other"))
    out_dir = eval_dir(run, other)
    os.makedirs(run_file(out_dir, PLOTS_DIR), exist_ok=True)
    name = display_path(os.path.basename(os.path.abspath(other)))
    plots.plot_ood({"cats and dogs (test)": pets, name: scores}, predictor.ood_threshold,
                   run_file(run_file(out_dir, PLOTS_DIR), OOD_PLOT))
    result = {"method": method(TrainConfig.load(run)), "threshold": predictor.ood_threshold,
              "keep_pets": KEEP_PETS,
              "groups": {name: ood_metrics(pets, scores, predictor.ood_threshold)}}
    write_json(run_file(out_dir, METRICS_FILE),
               {"ood": result, "source": {"other_folder": display_path(os.path.abspath(other)),
                                          "skipped_files": len(skipped)}})
    print(format_rejection(result))
    return result


def format_rejection(result: dict) -> str:
    """Plain-text lines: one per group of other photos."""
    threshold = result["threshold"]
    lines = [f"neither cat nor dog ({result['method']}; threshold "
             f"{'none' if threshold is None else f'{threshold:.4f}'}):"]
    for name, m in result["groups"].items():
        lines.append(f"  {name}: AUROC={m['auroc']:.4f}  FPR@95%TPR={m['fpr_at_95_tpr']:.4f}  "
                     f"rejected {m['other_rejected']:.1%} of {m['n_other']}; pets rejected "
                     f"{m['pets_rejected']:.1%}")
    return "\n".join(lines)
