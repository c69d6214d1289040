"""The recipe that tunes itself against the fixed one, on a held-out test set (issue 12's acceptance).

Protocol (written before any result was looked at; the README and bench/RESULTS.md report what it prints):
- Source: `builtin:digits-clean`. One `smallcnn` is pretrained on it (Pretrain stage, 15 epochs, batch 64, SGD
  lr 0.05, data seed 0) and shared by every run below.
- Target: `builtin:digits-noisy` (Gaussian noise sigma 0.4), as the demo (examples/digits-lpft.yaml): 5 labels
  per class, `testFraction: 0.2` split off first (stratified, seeded), 20 % of the rest for validation. Seeds
  0-4 pick the test split, the validation split, the shots and the initialisation.
- (a) The fixed recipe as it was before this change (the demo's): FrozenFeatures -> Head (one setting: AdamW
  lr 0.01, weight decay 1e-4, no label smoothing, 100 epochs, no early stopping) -> FullFineTune (20 epochs,
  batch 16, lr 3e-3, backbone LR scale 0.1, no augmentation, no early stopping); the exported model was the
  FullFineTune checkpoint with the best validation accuracy.
- (b) The new defaults on the same stages: the Head sweep (32 settings, patience 20), FullFineTune with the same
  settings, the export chosen among LP and FullFineTune, and (b+i) the same with `interpolate: auto`.
- Score: test accuracy of the exported model (model.json's `metrics.test_accuracy`); for (a), FullFineTune's
  (the model it exported). Test ECE before / after the temperature, of the exported model.
- Goal (the issue's): mean(b - a) >= +3 points with no seed worse by more than 1 point. The assertions below are
  the claim the measurement supports (see bench/RESULTS.md), not the goal, which was missed.

Amendment (2026-12-02, written before the second measurement; the first one, commit 5c1b133, had the export take
the best candidate by validation accuracy, which took LP for seeds 1 and 2, worse on test by 2-6 points): (b)'s
export keeps FullFineTune unless LP (or the interpolation) is better on validation by more than the noise, by an
exact one-sided McNemar test on per-image validation correctness at p < 0.05 shared among the alternatives
(`graft_trainer/selection.py`). The level 0.05 is the textbook one, fixed before measuring and not tuned on test. The
table also shows what the plain best-by-validation rule would have exported from the same runs, for comparison.

Amendment 2 (2026-12-07, issue 27 parts 6 and 7, written before these variants were measured; bench/recipe_variants.py
runs them beside (a), (b) and (b+i) on the same seeds). Each variant is tried for a reason other than its test score:
- (b-wide): the Head grid widened where (b)'s chosen setting sat on its edge (lr 0.1 in 4 of 5 seeds, weight decay
  1.0 in 4 of 5): lr adds 0.3, weight decay adds 3 and 10 (the API's cap of 1 on weight decay lifted for it).
- (b-soup): the Head exports the uniform soup (Wortsman et al. 2022) of the settings whose best validation accuracy is
  within one binomial standard error of the best one's (those validation cannot tell from the best), instead of the
  single best; for linear heads on the same features the weight average is the average of their logits.
- (b-surg): surgical fine-tuning (Lee et al., ICLR 2023): FullFineTune trains one of smallcnn's three conv blocks
  (the others and the head frozen), the block chosen per seed by FullFineTune's validation accuracy. Lee et al. find
  the first block best for input-level shifts, which Gaussian noise is.
- (b-wd), added after (b-wide) was measured and before (b-wd) was: (b-wide)'s weight decays with (b)'s learning
  rates. In (b-wide) seed 0 the sweep chose lr 0.3 with weight decay 0.01, a head with validation loss 4.3, and the
  fine-tuning that started from it ended 20 points below (a)'s on test: the wider lr, not the decay, lets a head grow
  large.
A variant becomes a default only if its mean gain over (a) on the 5 seeds is larger than (b)'s, no seed is worse
than (a) by more than 1 point, and on the check that it generalises (shotsPerClass 2, seeds 5-7, never used to choose)
its exported mean test accuracy is not lower than (b)'s. Part 7's check: on the 5 seeds and on shotsPerClass 2 with
seeds 5-7, the exported model's mean test accuracy is not below the Head (LP) candidate's by more than 1 point (the
5 seeds in the test below; the 2-shot seeds in bench/recipe_variants.py only: there LP and FullFineTune are level
on test, 0.280 each, so exporting either passes and a test of it could not fail through the export rule; with the
rule broken to export the worse-by-validation candidate, or to keep FullFineTune with its backbone's learning rate
x100, it stayed green).

Amendment 3 (2026-12-07, written after amendment 2's variants were measured and before this was): a paired test
that uses each validation image's confidence, not only whether it is right. In amendment 2's runs (b-wide) seed 0's
fine-tuning fell to 0.372 on validation against LP's 0.414 (6 images) and was kept (not significant under McNemar),
12 points worse than LP on test. The rule measured beside the current one on the same runs (bench/recipe_variants.py,
column "loss rule"): each candidate's validation logits get their own temperature (fitted on validation, as the
export's calibration does), then the per-image cross-entropy differences FullFineTune - LP get a one-sided sign-flip
randomisation test of their mean (20,000 flips, seed 0); LP is exported when p < 0.05, else FullFineTune. It replaces
the McNemar test only if, on the 5 seeds and at shotsPerClass 2 with seeds 5-7, for (b) and for every variant of
amendment 2, its exported mean test accuracy is not lower than the current rule's, and the test's bounds hold.

Each job runs through the `Driver` with the `LocalExecutor` (the stage loops Ray Train runs, in this process), as
tests/trainer/test_transfer.py does.
"""

from __future__ import annotations

import statistics

from support.trainer_data import NO_SERVING, job_doc

from graft import storage
from graft.api.models import TransferJob
from graft_trainer.driver import Driver
from graft_trainer.executors import LocalExecutor

SEEDS = (0, 1, 2, 3, 4)
DATA = {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 5, "testFraction": 0.2}
FT = {"type": "FullFineTune", "epochs": 20, "batchSize": 16, "lr": 3e-3, "backboneLrScale": 0.1, "augment": False}
FIXED_HEAD = {"type": "Head", "epochs": 100, "lr": 0.01, "weightDecay": 1e-4, "labelSmoothing": 0.0,
              "patience": None}
PRETRAIN = {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 15, "batchSize": 64,
            "lr": 0.05}
RECIPES = {
    "a": [{"type": "FrozenFeatures"}, FIXED_HEAD, FT],
    "b": [{"type": "FrozenFeatures"}, {"type": "Head"}, FT],
    "b+i": [{"type": "FrozenFeatures"}, {"type": "Head"}, {**FT, "interpolate": "auto"}],
}


def _run(name, stages, seed, store, weights=None, data=None):
    spec = {"model": {"backbone": "smallcnn", "numClasses": 10, "weights": weights},
            "data": {**(data or DATA), "seed": seed}, "stages": stages, "serving": NO_SERVING}
    return Driver(TransferJob.model_validate(job_doc(name, spec)), str(store), executor=LocalExecutor()).run()


def measure(tmp_path, recipes=RECIPES, seeds=SEEDS, data=DATA) -> dict[str, list[dict[str, float]]]:
    """Per recipe, per seed: the exported model's test accuracy and test ECE before / after calibration."""
    source = _run("pretrain", [PRETRAIN], 0, tmp_path, data={"train": "builtin:digits-noisy", "imageSize": 8})
    weights = source.stage("Pretrain").output
    out: dict[str, list[dict[str, float]]] = {name: [] for name in recipes}
    for seed in seeds:
        for name, stages in recipes.items():
            ledger = _run(f"{name.replace('+', '-')}-{seed}", stages, seed, tmp_path, weights=weights, data=data)
            head, fft = ledger.stage("Head"), ledger.stage("FullFineTune")
            meta = storage.read_json(storage.join(ledger.model_uri, "model.json"))
            if name == "a":  # before this change, the last stage's best checkpoint was exported
                m, exported = fft.metrics, "FullFineTune"
            else:
                m, exported = meta["metrics"], meta["selection"]["stage"]
            # What the plain rule (the best by validation accuracy, then loss; LP on an exact tie) would export.
            plain = max(meta["selection"]["candidates"], key=lambda c: (c["val_accuracy"], -c["val_loss"]))
            row = head.sweep[head.chosen]
            outputs = {"Head": head.output, "FullFineTune": fft.output}
            out[name].append({"test_accuracy": m["test_accuracy"], "val_accuracy": m["val_accuracy"],
                              "test_ece": m["test_ece"],
                              "test_ece_calibrated": m["test_ece_calibrated"], "exported": exported,
                              "plain_test": plain["test_accuracy"], "plain": plain["stage"],
                              "tests": {t["stage"]: t for t in meta["selection"]["tests"]},
                              "head_val": head.metrics["val_accuracy"], "fft_val": fft.metrics["val_accuracy"],
                              "head_test": head.metrics["test_accuracy"], "fft_test": fft.metrics["test_accuracy"],
                              "head_row": row, "fft_best_epoch": fft.metrics["best_epoch"], "outputs": outputs})
    return out


def report(results: dict[str, list[dict]]) -> str:
    lines = ["| seed | " + " | ".join(f"({n}) test acc" for n in results) + " | (b) - (a) | (b+i) - (a) |",
             "|---|" + "---|" * (len(results) + 2)]
    for i, seed in enumerate(SEEDS):
        acc = {n: r[i]["test_accuracy"] for n, r in results.items()}
        cells = " | ".join(f"{acc[n]:.3f} ({results[n][i]['exported']})" for n in results)
        lines.append(f"| {seed} | {cells} | {acc['b'] - acc['a']:+.3f} | {acc['b+i'] - acc['a']:+.3f} |")
    means = {n: statistics.mean(r["test_accuracy"] for r in rs) for n, rs in results.items()}
    for key, what in (("head_test", "Head (LP) alone"), ("fft_test", "FullFineTune alone"),
                      ("plain_test", "plain best-by-validation export")):
        lines.append(f"| mean {what} | " + " | ".join(
            f"{statistics.mean(r[key] for r in results[n]):.3f}" for n in results) + " | | |")
    lines.append("| mean | " + " | ".join(f"{means[n]:.3f}" for n in results)
                 + f" | {means['b'] - means['a']:+.3f} | {means['b+i'] - means['a']:+.3f} |")
    for n, rs in results.items():
        before = statistics.mean(r["test_ece"] for r in rs)
        after = statistics.mean(r["test_ece_calibrated"] for r in rs)
        lines.append(f"\n({n}) mean test ECE (15 bins): {before:.4f} before the temperature, {after:.4f} after")
    lines.append("\nper seed: LP / FullFineTune on validation and test, the paired test of LP against FullFineTune "
                 "(wins, losses, p), the Head's chosen setting and best epoch, FullFineTune's best epoch")
    for n, rs in results.items():
        for seed, r in zip(SEEDS, rs, strict=True):
            t, h = r["tests"].get("Head", {}), r["head_row"]
            lines.append(f"({n}) seed {seed}: val {r['head_val']:.3f} / {r['fft_val']:.3f}, test {r['head_test']:.3f}"
                         f" / {r['fft_test']:.3f}; LP vs FT {t.get('wins')}-{t.get('losses')} p={t.get('p')}; "
                         f"head lr {h['lr']} wd {h['weight_decay']} ls {h['label_smoothing']} best epoch "
                         f"{h['best_epoch']:.0f}; FT best epoch {r['fft_best_epoch']:.0f}; plain rule: {r['plain']}")
    return "\n".join(lines)


def test_the_tuned_recipe_against_the_fixed_one_on_held_out_test(tmp_path, one_thread):
    """What the measurement supports (bench/RESULTS.md): the issue's goal, +3 points mean with no seed worse by more
    than 1, is NOT met: the new defaults export a model +1.9 points better on mean test accuracy, no seed worse. The
    claim asserted: (b) at least 1 point better on mean, no seed worse by more than 1 point (the issue's bound); the
    export is never worse on test than FullFineTune alone by more than 2 points (about 3 of ~180 test images: the
    plain best-by-validation choice was 6 points worse for a seed); its mean is not below the Head (LP) candidate's by
    more than 1 point (issue 27); temperature scaling lowers mean test ECE."""
    results = measure(tmp_path)
    print(report(results))
    pairs = list(zip(results["a"], results["b"], strict=True))
    exported = [b["test_accuracy"] - a["test_accuracy"] for a, b in pairs]
    print(f"per seed (b) - (a), exported model: {exported}")
    assert statistics.mean(exported) >= 0.01, exported  # not the +0.03 the issue hoped for
    assert min(exported) >= -0.01, exported
    for name in ("b", "b+i"):
        behind = [r["fft_test"] - r["test_accuracy"] for r in results[name]]
        assert max(behind) <= 0.02, (name, behind)
        # Issue 27's bound against the linear probe (amendment 2): not below LP's mean test by more than 1 point.
        lp = statistics.mean(r["head_test"] for r in results[name])
        assert statistics.mean(r["test_accuracy"] for r in results[name]) >= lp - 0.01, (name, lp)
    for name in results:
        before = statistics.mean(r["test_ece"] for r in results[name])
        after = statistics.mean(r["test_ece_calibrated"] for r in results[name])
        assert after < before, (name, before, after)
