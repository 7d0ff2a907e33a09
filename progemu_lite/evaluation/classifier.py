"""The progression-alignment classifier: a small CNN that reads each finding's severity from an
image, trained on simulated radiographs.

Heads
-----
One head per (finding, side group) of :func:`head_keys`: pleural effusion, pneumothorax,
consolidation, atelectasis and nodule have a left and a right head (a lobe counts for its side),
cardiomegaly and pulmonary edema one head each: 12 heads. Each head is a 4-way softmax over the
severity 0 (absent) .. 3; a side group's severity is the largest severity of the finding in that
group (two consolidated right lobes: the worse one). Presence probability = 1 - P(severity 0).

Training data: every pair of the simulated train split gives two labelled images, the prior
(``severity_before`` of each annotation entry) and the follow-up (``severity_after``); findings
the annotation does not list are absent. Pairs without an annotation are skipped.

Alignment protocol (:func:`alignment_pairs`)
--------------------------------------------
For a case whose prompt asks for ``finding`` at ``location`` to go ``direction`` to a target
severity, the *expected* state of its head in the follow-up is the head's group severity after
the change (the target, or a larger severity of the same finding elsewhere on that side, which
the annotation gives); ``resolved`` expects severity 0 unless another lobe on that side keeps the
finding. The classifier reads the image under test:

* positive (label 1): score = P(head severity == expected);
* negatives (label 0): the same image scored against each *incompatible* progression of the same
  head, i.e. every other severity s != expected: score = P(head severity == s).

AUROC is computed over all positives and negatives; F1 over the decisions score >= 0.5. The
true follow-up scored the same way is the classifier's own upper bound; the unchanged prior
scores low because it shows the prior severity, which is one of the negatives.

Network: a 5x5 stride-2 stem and four stride-2 3x3 convolutions (16-32-64-96-128 channels, batch
norm, ReLU), average-pooled to a 2x2 grid (left/right findings need to know where they are), a
128-unit ReLU layer (the features of the Fréchet distance) and the 12 x 4 logits. Inputs are
resized to the classifier's size (default 128, the model size) and scaled to [-1, 1].

Saved as ``classifier.safetensors`` (weights) + ``classifier.json`` (heads, image size,
training facts) in one folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write, atomic_write_json
from ..phantom.findings import FINDINGS, MAX_SEVERITY, laterality

WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"
FORMAT = "progemu-lite-alignment-classifier/1"
N_CLASSES = MAX_SEVERITY + 1
DEFAULT_SIZE = 128
CHANNELS = (16, 32, 64, 96, 128)
FEATURES = 128  # the penultimate layer: what the Fréchet distance compares


def head_keys() -> list[tuple[str, str | None]]:
    """(finding, side group) of every head, in a fixed order."""
    keys: list[tuple[str, str | None]] = []
    for name, spec in FINDINGS.items():
        groups = list(dict.fromkeys(laterality(loc) for loc in spec.locations))
        keys += [(name, g) for g in groups]
    return keys


def head_of(finding: str, location: str | None) -> tuple[str, str | None]:
    return (finding, laterality(location))


def head_labels(entries, when: str) -> np.ndarray:
    """Severity (0..3) per head of the image before (``when="before"``) or after a change, from
    annotation entries (AnnotationEntry objects or dicts)."""
    index = {key: i for i, key in enumerate(head_keys())}
    labels = np.zeros(len(index), dtype=np.int64)
    for entry in entries:
        e = entry if isinstance(entry, dict) else entry.to_dict()
        word = e["severity_before"] if when == "before" else e["severity_after"]
        spec = FINDINGS[e["finding"]]
        severity = 0 if word == "absent" else spec.severity_words.index(word) + 1
        i = index[head_of(e["finding"], e["location"])]
        labels[i] = max(labels[i], severity)
    return labels


def _build_network(n_heads: int):
    import torch
    from torch import nn

    # A 5x5 stem then one strided 3x3 convolution per stage: ~16 M multiply-adds per 128x128
    # image, so a few thousand images train in minutes on 2 CPU cores.
    layers: list[nn.Module] = [
        nn.Conv2d(1, CHANNELS[0], 5, stride=2, padding=2),
        nn.BatchNorm2d(CHANNELS[0]),
        nn.ReLU(inplace=True),
    ]
    previous = CHANNELS[0]
    for width in CHANNELS[1:]:
        layers += [
            nn.Conv2d(previous, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        previous = width

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*layers)
            # Keep a 2x2 layout before the heads: left and right findings need to know where
            # they are, which a global average would throw away.
            self.pool = nn.AdaptiveAvgPool2d((2, 2))
            self.neck = nn.Sequential(nn.Linear(previous * 4, FEATURES), nn.ReLU(inplace=True))
            self.head = nn.Linear(FEATURES, n_heads * N_CLASSES)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return self.neck(self.pool(self.body(x)).flatten(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x)).view(len(x), n_heads, N_CLASSES)

    return Net()


def resize_images(images, size: int) -> np.ndarray:
    """uint8 ``(N, size, size)``: images resized (bilinear) where needed."""
    from PIL import Image

    out = []
    for image in images:
        image = np.asarray(image, dtype=np.uint8)
        if image.shape != (size, size):
            image = np.asarray(
                Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
            )
        out.append(image)
    return np.stack(out) if out else np.zeros((0, size, size), np.uint8)


@dataclass
class AlignmentClassifier:
    """A trained classifier: call :meth:`predict` (severity probabilities per head) or
    :meth:`features` (the pooled penultimate layer, for the Fréchet distance)."""

    network: object
    size: int
    info: dict

    @property
    def heads(self) -> list[tuple[str, str | None]]:
        return [tuple(k) for k in self.info["heads"]]

    def _run(self, images, what: str, batch_size: int = 64) -> np.ndarray:
        import torch

        images = resize_images(images, self.size)
        self.network.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(images[start : start + batch_size]).float()[:, None] / 127.5
                x = x - 1.0
                if what == "features":
                    out.append(self.network.features(x).numpy())
                else:
                    out.append(torch.softmax(self.network(x), dim=-1).numpy())
        if not out:
            shape = (0, FEATURES) if what == "features" else (0, len(self.heads), N_CLASSES)
            return np.zeros(shape, np.float32)
        return np.concatenate(out)

    def predict(self, images) -> np.ndarray:
        """``(N, heads, 4)`` severity probabilities of uint8 grayscale images ``(N, H, W)``."""
        return self._run(images, "predict")

    def features(self, images) -> np.ndarray:
        """``(N, FEATURES)`` penultimate-layer features (for the Fréchet distance)."""
        return self._run(images, "features")

    def save(self, folder) -> Path:
        """Write weights and config atomically (temporary names, then rename)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.network.state_dict().items()}
        atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
        atomic_write_json(folder / CONFIG_FILE, self.info, indent=2)
        return folder

    @classmethod
    def load(cls, folder) -> AlignmentClassifier:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise FileNotFoundError(
                f"{folder} is not an alignment classifier (needs {CONFIG_FILE} and "
                f"{WEIGHTS_FILE}); train one with `progemu-lite train-classifier`"
            )
        try:
            info = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path}: malformed JSON: {err}") from None
        if info.get("format") != FORMAT:
            raise ValueError(f"{config_path}: not a {FORMAT} file")
        network = _build_network(len(info["heads"]))
        try:
            network.load_state_dict(load_file(str(weights_path)))
        except (SafetensorError, RuntimeError, OSError) as err:
            raise ValueError(f"{weights_path}: unreadable or mismatched weights: {err}") from None
        return cls(network.eval(), int(info["size"]), info)


def training_set(cases) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(2N, H, W)`` and head labels ``(2N, heads)`` from the annotated cases (objects
    with ``prior``, ``followup`` and ``annotation``, e.g. :class:`baselines.Case`)."""
    images, labels = [], []
    for case in cases:
        if not case.annotation:
            continue
        images += [case.prior, case.followup]
        labels += [head_labels(case.annotation, "before"), head_labels(case.annotation, "after")]
    if not images:
        raise ValueError("no annotated pairs to train the classifier on")
    return np.stack(images), np.stack(labels)


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    size: int = DEFAULT_SIZE,
    epochs: int = 8,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    extra_info: dict | None = None,
) -> AlignmentClassifier:
    """Train a fresh classifier on ``images`` (uint8 ``(N, H, W)``) and ``labels``
    (``(N, heads)`` severities 0..3). Augmentation: small random shifts (registration jitter)."""
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(resize_images(images, size)).float()[:, None] / 127.5 - 1.0
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    network = _build_network(y_all.shape[1])
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * max(1, -(-len(x_all) // batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    shift = max(1, size // 32)
    bar = tqdm(total=steps, desc="training classifier", unit="step", disable=not progress)
    network.train()
    last_loss = float("nan")
    with bar:
        for _ in range(epochs):
            order = torch.randperm(len(x_all), generator=generator)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                dx, dy = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
                x = torch.roll(x_all[idx], shifts=(dy, dx), dims=(2, 3))
                logits = network(x)
                loss = loss_fn(logits.reshape(-1, N_CLASSES), y_all[idx].reshape(-1))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                last_loss = float(loss.detach())
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}")
    info = {
        "format": FORMAT,
        "heads": [list(k) for k in head_keys()][: y_all.shape[1]],
        "size": size,
        "epochs": epochs,
        "seed": seed,
        "train_images": len(x_all),
        "final_loss": last_loss,
        **(extra_info or {}),
    }
    return AlignmentClassifier(network.eval(), size, info)


# ----------------------------------------------------------------------------------------------
# Alignment


def expected_head_state(progression: dict, annotation) -> tuple[int, int] | None:
    """(head index, expected severity) a prompted progression asks of the follow-up image.

    ``progression``: ``{finding, location, direction, severity}`` (the simulated pairs'
    ``requested-progression``). The expected severity is the head's group severity after the
    change, from the annotation when it has one, else the target severity itself.
    """
    try:
        key = head_of(progression["finding"], progression["location"])
        index = head_keys().index(key)
        target = int(progression["severity"])
    except (KeyError, ValueError, TypeError):
        return None
    if not 0 <= target <= MAX_SEVERITY:
        return None
    if annotation:
        try:
            after = head_labels(annotation, "after")[index]
        except (KeyError, ValueError, TypeError, AttributeError):
            after = target
        # The prompted finding itself is at ``target``; another lobe on that side may be worse.
        return index, int(max(after, target))
    return index, target


def alignment_pairs(probabilities: np.ndarray, expected: list[tuple[int, int] | None]):
    """Scores and labels of the alignment protocol (module docstring) and per-case arrays.

    Returns ``(scores, labels, case_of)``: one positive and ``N_CLASSES - 1`` negatives per case
    whose expectation is known; ``case_of`` gives each pair's case index (for the bootstrap).
    """
    scores, labels, case_of = [], [], []
    for case, (probs, exp) in enumerate(zip(probabilities, expected, strict=True)):
        if exp is None:
            continue
        head, severity = exp
        for s in range(N_CLASSES):
            scores.append(float(probs[head, s]))
            labels.append(1 if s == severity else 0)
            case_of.append(case)
    return np.asarray(scores), np.asarray(labels, dtype=np.int64), np.asarray(case_of, np.int64)


def auroc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks); NaN if one class is missing."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, float), np.asarray(labels)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1_at(scores, labels, threshold: float = 0.5) -> float:
    """F1 of the decisions ``score >= threshold`` (0 when nothing is predicted or true)."""
    predicted = np.asarray(scores) >= threshold
    labels = np.asarray(labels) == 1
    tp = int((predicted & labels).sum())
    fp = int((predicted & ~labels).sum())
    fn = int((~predicted & labels).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def presence_auroc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean over heads of the presence AUROC (heads with both classes only)."""
    values = []
    for head in range(labels.shape[1]):
        present = (labels[:, head] > 0).astype(int)
        value = auroc(1.0 - probabilities[:, head, 0], present)
        if not np.isnan(value):
            values.append(value)
    return float(np.mean(values)) if values else float("nan")
