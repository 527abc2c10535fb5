"""The embedded default task, "noisy max": procedurally generated, deterministic per seed.

Each item shows four distinct numbers (1..20) as options A-D and asks for the largest. The
numbers are *readings*: the gold option is the arg-max of the readings plus unseen Gaussian
noise N(0, SIGMA), so when two readings are close the answer is genuinely uncertain and even
the best possible model cannot be sure. That is what makes calibration matter here: a model
that says 99% on a near-tie is over-confident.

The Bayes-optimal predictor picks the largest reading; its probability for option j is
P(j wins | readings) = E_z[prod_{k != j} Phi(z + (s_j - s_k) / SIGMA)], z ~ N(0, 1),
s = readings, computed exactly (Gauss-Hermite quadrature, vectorised over items) and stored
per item in `meta.bayes_probs` (and `meta.bayes_p`, the probability of the gold option) so
that a model's calibration can be compared with the best achievable.

Why only "largest": a tiny transformer trained from scratch on 2 CPU cores learns the
arg-max of four numbers in a minute, but asking for the largest *or* the smallest kept
students of the demo's size on the chance plateau for the whole budget, and a distillation
demo whose students learn nothing shows nothing about calibration.

In-domain (train / val / test): readings are distinct integers from a random window of
IN_WIDTH consecutive values in 1..20 (Bayes accuracy about 84%), four phrasings.
Out-of-domain (test_ood): readings from a narrower window (OOD_WIDTH: closer together, so
harder; Bayes accuracy about 72%), other phrasings built from the same words (so a word-level
tokenizer trained on the training split covers them), and options sometimes written as
"number 47" / "value 47".

Text is lower case with punctuation as separate words, so every number and symbol is its own
whitespace-delimited word. Files use the CommonsenseQA original JSONL layout (the loader path
of real data) with an extra `meta` field that the loader ignores. Each split draws from its own
random stream (seed, split), so changing one split's size leaves the others unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy.special import ndtr

from ..atomic_files import write_text_atomic

SPLITS = ("train", "val", "test", "test_ood")
LETTERS = ("A", "B", "C", "D")
SIGMA = 2.0        # noise on the readings (same in every split)
IN_WIDTH = 20      # in-domain readings lie in a window of this many consecutive integers
OOD_WIDTH = 10     # out-of-domain window: readings closer together
LOW, HIGH = 1, 20  # the readings' range
_QUAD_NODES = 48   # Gauss-Hermite nodes; exact to ~1e-6 for these gaps

# Phrasings; the OOD ones reuse in-domain words in other orders.
IN_DOMAIN = (
    "which number is the largest ?",
    "which of these numbers is the biggest ?",
    "pick the highest number .",
    "what is the largest value here ?",
)
OUT_OF_DOMAIN = (
    "of these numbers which is the largest ?",
    "the largest value here is which number ?",
    "what number here is the biggest ?",
    "which value here is the highest ?",
)
IN_OPTION_STYLES = ("{n}",)
OOD_OPTION_STYLES = ("{n}", "number {n}", "value {n}")


@dataclass(frozen=True)
class _Variant:
    width: int
    phrasings: tuple[str, ...]
    option_styles: tuple[str, ...]


_IN = _Variant(IN_WIDTH, IN_DOMAIN, IN_OPTION_STYLES)
_OOD = _Variant(OOD_WIDTH, OUT_OF_DOMAIN, OOD_OPTION_STYLES)


def bayes_probs(readings: np.ndarray, sigma: float = SIGMA, chunk: int = 8192) -> np.ndarray:
    """N x 4 probability that each option is gold, given the readings (exact, vectorised).

    Chunked over items so memory stays bounded (nodes x chunk x 4 x 4 floats).
    """
    s = np.asarray(readings, dtype=np.float64)
    z, w = hermegauss(_QUAD_NODES)
    w = w / w.sum()
    eye = np.eye(s.shape[1], dtype=bool)
    out = np.empty_like(s)
    for lo in range(0, len(s), chunk):
        part = s[lo:lo + chunk]
        diff = (part[:, :, None] - part[:, None, :]) / sigma               # n x j x k
        cdf = ndtr(z[:, None, None, None] + diff[None])                    # G x n x j x k
        cdf[..., eye] = 1.0                                                # k == j drops out
        out[lo:lo + chunk] = np.einsum("g,gnj->nj", w, cdf.prod(axis=-1))
    return out


def _generate(rng: np.random.Generator, n: int, variant: _Variant) -> dict[str, np.ndarray]:
    """Vectorised draw of n items: readings, phrasing, option style, gold."""
    start = rng.integers(LOW, HIGH - variant.width + 2, size=n)
    offsets = np.argsort(rng.random((n, variant.width)), axis=1)[:, : len(LETTERS)]
    readings = start[:, None] + offsets                                # distinct per row
    phrasing = rng.integers(len(variant.phrasings), size=n)
    style = rng.integers(len(variant.option_styles), size=n)
    noisy = readings + rng.normal(0.0, SIGMA, size=readings.shape)
    return dict(readings=readings, phrasing=phrasing, style=style,
                probs=bayes_probs(readings), gold=noisy.argmax(axis=1))


def _records(split: str, items: dict[str, np.ndarray], variant: _Variant) -> str:
    """The JSONL text of one split (CommonsenseQA original layout + `meta`)."""
    lines = []
    for i, (values, ph, st, probs, gold) in enumerate(zip(
            items["readings"].tolist(), items["phrasing"].tolist(), items["style"].tolist(),
            np.round(items["probs"], 6).tolist(), items["gold"].tolist())):
        fmt = variant.option_styles[st]
        rec = {
            "answerKey": LETTERS[gold],
            "id": f"{split}-{i:05d}",
            "question": {
                "stem": variant.phrasings[ph],
                "choices": [{"label": lab, "text": fmt.format(n=v)}
                            for lab, v in zip(LETTERS, values)],
            },
            "meta": {"bayes_probs": probs, "bayes_p": probs[gold]},
        }
        lines.append(json.dumps(rec))
    return "\n".join(lines) + "\n" if lines else ""


def task_files(out_dir: str | Path) -> dict[str, Path]:
    """The paths `write_task` writes: {split: out_dir/split.jsonl}."""
    return {split: Path(out_dir) / f"{split}.jsonl" for split in SPLITS}


def write_task(out_dir: str | Path, seed: int = 0, n_train: int = 4000, n_val: int = 500,
               n_test: int = 1000, n_ood: int = 1000) -> dict[str, Path]:
    """Write the four splits of the default task; the same arguments give identical bytes."""
    sizes = dict(zip(SPLITS, (n_train, n_val, n_test, n_ood)))
    for split, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n_{'ood' if split == 'test_ood' else split}: expected a "
                             f"positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    paths = task_files(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for index, split in enumerate(SPLITS):
        variant = _OOD if split == "test_ood" else _IN
        items = _generate(np.random.default_rng([int(seed), index]), sizes[split], variant)
        write_text_atomic(paths[split], _records(split, items, variant))
    return paths
