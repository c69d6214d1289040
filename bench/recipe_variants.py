"""Variants of the recipe on tests/trainer/test_recipe.py's protocol (same data, seeds and held-out test split),
beside (a), (b) and (b+i) measured in the same run. A diagnostic for issue 12's +3 points goal: a variant is only
ever adopted for a reason other than its test score, and then confirmed by the protocol.

    .venv/bin/python bench/recipe_variants.py          # about 1 minute on 2 cores

(b-vl): the new defaults with the Head's `monitor: val_loss` (the sweep's setting and each setting's best epoch
chosen by validation loss, a proper scoring rule with less noise than accuracy on ~145 images, instead of
accuracy).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "trainer")]

import test_recipe  # noqa: E402
import torch  # noqa: E402

VARIANTS = {
    "b-vl": [{"type": "FrozenFeatures"}, {"type": "Head", "monitor": "val_loss"}, test_recipe.FT],
}


def main() -> None:
    torch.set_num_threads(1)  # as the test's one_thread fixture: same floating-point order every run
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = test_recipe.measure(Path(tmp), {**test_recipe.RECIPES, **VARIANTS})
    print(test_recipe.report(results))
    for name, rs in results.items():
        val = sum(r["fft_val"] for r in rs) / len(rs)
        test = sum(r["fft_test"] for r in rs) / len(rs)
        print(f"({name}) FullFineTune mean: validation {val:.3f}, test {test:.3f}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
