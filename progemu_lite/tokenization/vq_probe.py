"""Can a reader still see a prior's findings in its VQ tokens? (``progemu-lite vq-probe``)

ProgEmu's interpretation can report a prior's unchanged findings ("stable cardiomegaly") only
if the decoder reads them off the prior's image tokens. PSNR and the per-finding ``sign_kept``
of :mod:`~progemu_lite.tokenization.vq_figures` say how much signal survives the tokenizer; this
probe asks what a reader can *tell*. It trains the same small CNN trunk four times, from the same
seed, to say which findings (type and side) each training prior holds (:data:`READERS`):

* from the original pixels (the baseline: what the images show at all);
* from the same priors after the VQ round trip (encode, then decode: what the codes keep);
* from the codes themselves, through an embedding learnt from scratch (what a fresh decoder
  starts with: one independent vector per code);
* from the codes through the VQ's own codebook vectors (codes that look alike start alike).

All are scored like the model issue's stable-finding check, on the held-out pairs: the share of
their annotated stable findings the reader detects in the prior. Round trip below pixels: the
tokenizer loses findings. Learnt-embedding codes below codebook codes: the information is in the
codes but hard to learn to read from code identities alone.

A patient's pairs share one prior image, so images are deduplicated before training (each
counts once) while recall counts every held-out pair's stable findings, as the evaluation does.
The readers are not the evaluation's alignment classifier (``evaluation.classifier``), which
reads pixels only: here one trunk must take pixels and codes alike, so that the inputs, not the
architectures, differ.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from progemu_lite.phantom.findings import FINDINGS, laterality

PROBE_FILE = "probe.json"
PROBE_FIGURE = "probe.png"
# Directions whose finding is already in the prior (a "new" one is not).
_IN_PRIOR = ("worse", "better", "resolved", "stable")
# The four readers: report key, input kind (READER_INPUTS), label; with the figure's colour
# (Okabe-Ito) for each.
READERS = (
    ("pixels", "image", "the original priors"),
    ("round_trip", "image", "their VQ round trips"),
    ("codes", "codes", "their codes, embedding learnt"),
    ("codebook", "codebook", "their codes, codebook vectors"),
)
_COLORS = {"pixels": "#0072B2", "round_trip": "#E69F00", "codes": "#CC79A7", "codebook": "#009E73"}


def _probe_keys() -> tuple[tuple[str, str | None], ...]:
    """What the reader tells apart: each finding type at each side it can take (findings with a
    single place, cardiomegaly and edema, have no side), as the stable-finding check matches."""
    keys = []
    for name, spec in FINDINGS.items():
        sides = sorted({laterality(location) for location in spec.locations} - {None})
        keys += [(name, None)] if len(spec.locations) == 1 else [(name, s) for s in sides]
    return tuple(keys)


PROBE_KEYS = _probe_keys()


def prior_targets(annotation) -> tuple[np.ndarray, np.ndarray]:
    """``(present, stable)`` vectors over :data:`PROBE_KEYS` from one pair's expert annotation:
    which findings the prior holds (bool; every entry but a new one) and which of them the
    annotation calls stable, as their severity grade (int8: 1 for the finding's mildest
    severity word to 3 for its most severe; 0 where not stable), so a reading can be scored per
    severity."""
    from progemu_lite.evaluation.finding_scores import parse_annotation

    entries, problems = parse_annotation(annotation)
    if entries is None or problems:
        raise ValueError(f"unusable expert annotation: {problems[0]}")
    present = np.zeros(len(PROBE_KEYS), dtype=bool)
    stable = np.zeros(len(PROBE_KEYS), dtype=np.int8)
    for entry in entries:
        spec = FINDINGS[entry.finding]
        side = None if len(spec.locations) == 1 else entry.laterality
        key = PROBE_KEYS.index((entry.finding, side))
        present[key] |= entry.direction in _IN_PRIOR
        if entry.direction == "stable":
            words = spec.severity_words
            stable[key] = words.index(entry.severity) + 1 if entry.severity in words else 1
    return present, stable


@dataclass
class ProbeSet:
    """Deduplicated priors with their findings, and the held-out pairs that score a reader."""

    images: np.ndarray  # uint8 (N, size, size), each distinct prior once
    present: np.ndarray  # bool (N, K): findings each prior holds
    train: np.ndarray  # bool (N,): the prior belongs to a training pair
    pair_image: np.ndarray  # int (P,): each held-out pair's prior (row of ``images``)
    pair_stable: np.ndarray  # int8 (P, K): each held-out pair's stable findings' grades (0: none)

    @property
    def n_train(self) -> int:
        return int(self.train.sum())


def probe_pairs(data: str | os.PathLike) -> list:
    """Every pair (ICG-CXR ``PairRecord``) under ``data``; an error unless some are training
    pairs (they train the reader) and some held-out ones (they score it)."""
    from progemu_lite.data.icgcxr import iter_pairs

    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"data folder {str(data)!r} does not exist")
    records = list(iter_pairs(data))
    if not any(r.split == "train" for r in records):
        raise ValueError(f"no 'train' pairs under {data}: the reader learns from them")
    if all(r.split == "train" for r in records):
        raise ValueError(f"no held-out (val or test) pairs under {data}: they score the reader")
    return records


def load_probe_set(
    pairs: list,
    image_size: int,
    *,
    max_train_images: int | None = None,
    progress: bool = True,
) -> ProbeSet:
    """The priors of ``pairs`` (from :func:`probe_pairs`), resized to ``image_size``: the
    ``train`` split's distinct priors train the reader (the first ``max_train_images`` of them
    if given), the other pairs score it."""
    from PIL import Image
    from tqdm.auto import tqdm

    from progemu_lite.data.icgcxr import load_pair_images

    if max_train_images is not None and max_train_images < 1:
        raise ValueError(f"--max-train-images must be at least 1, got {max_train_images}")
    index: dict[bytes, int] = {}
    images, present, train = [], [], []
    pair_image, pair_stable = [], []
    for record in tqdm(pairs, desc="reading priors", unit="pair", disable=not progress):
        is_train = record.split == "train"
        try:
            has, stable = prior_targets(record.annotation)
        except ValueError as err:
            raise ValueError(f"{record.json_path}: {err}") from err
        prior, _ = load_pair_images(record)
        if prior.shape != (image_size, image_size):
            if prior.shape[0] != prior.shape[1]:
                raise ValueError(f"{record.prior_path}: not square ({prior.shape})")
            prior = np.asarray(
                Image.fromarray(prior).resize((image_size, image_size), Image.Resampling.BOX)
            )
        digest = hashlib.sha1(prior.tobytes()).digest()
        row = index.get(digest)
        if row is None:
            row = index[digest] = len(images)
            images.append(prior)
            present.append(has)
            train.append(is_train)
        elif train[row] != is_train:
            raise ValueError(
                f"{record.prior_path}: the same prior image is in the training split and a "
                "held-out one; the probe needs patient-disjoint splits"
            )
        else:
            present[row] |= has  # another pair's annotation may name more of the prior
        if not is_train:
            pair_image.append(row)
            pair_stable.append(stable)
    train = np.array(train)
    keep = ~train | (np.cumsum(train) <= (max_train_images or len(train)))
    new_row = np.cumsum(keep) - 1  # held-out priors are all kept: renumber the pairs' rows
    return ProbeSet(
        np.stack(images)[keep],
        np.stack(present)[keep],
        train[keep],
        new_row[np.array(pair_image)],
        np.stack(pair_stable),
    )


# What each reader looks at: the images' pixels, or the VQ codes through one of two embeddings.
READER_INPUTS = ("image", "codes", "codebook")
# Training passes over the training priors (with train_reader's one-cycle schedule): at 24
# the pixel reader's training loss is near 0 and it sees 79% of the 12,000-patient set's stable
# findings (docs/model_card.md, "What the tokenizer lets a reader see").
READER_EPOCHS = 24


def _reader(n_outputs: int, source: str = "image", codebook=None):
    """A small CNN naming the findings of an input: ``image`` (uint8 ``(N, H, W)``: two
    stride-2 convolutions), ``codes`` (int ``(N, h, w)`` VQ codes through an embedding learnt
    from scratch, as a fresh decoder's) or ``codebook`` (the same codes through the VQ's own,
    frozen codebook vectors and a learnt 1x1 convolution). All three then share one trunk: a
    left-right coordinate channel, convolutions at the token grid (a stride-2 one for images), a
    2x pool, and mean- and max-pooled features to one logit per finding key (max pooling: a small
    finding anywhere should count)."""
    import torch
    from torch import nn

    if source not in READER_INPUTS:
        raise ValueError(f"unknown reader input {source!r}; choose one of {READER_INPUTS}")

    def conv(c_in: int, c_out: int, stride: int = 1) -> list:
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GELU()]

    class FindingReader(nn.Module):
        def __init__(self):
            super().__init__()
            if source == "image":
                self.stem = nn.Sequential(*conv(1, 24, 2), *conv(24, 48, 2))
            elif source == "codes":
                self.embedding = nn.Embedding(codebook.shape[0], 48)
            else:
                self.register_buffer("codebook", codebook.detach().float().clone())
                self.stem = nn.Conv2d(codebook.shape[1], 48, 1)
            self.features = nn.Sequential(
                *conv(49, 96, 2 if source == "image" else 1),
                *conv(96, 96),
                nn.MaxPool2d(2),
                *conv(96, 192),
                *conv(192, 192),
            )
            self.head = nn.Linear(384, n_outputs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if source == "image":
                x = self.stem(x.float().unsqueeze(1) / 127.5 - 1.0)
            elif source == "codes":
                x = self.embedding(x.long()).permute(0, 3, 1, 2)
            else:
                x = self.stem(self.codebook[x.long()].permute(0, 3, 1, 2))
            # A left-right coordinate channel: the side of a finding is part of what is read.
            across = torch.linspace(-1.0, 1.0, x.shape[-1], device=x.device, dtype=x.dtype)
            h = self.features(torch.cat([x, across.expand(len(x), 1, *x.shape[2:])], dim=1))
            return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1))

    return FindingReader()


def train_reader(
    inputs: np.ndarray,
    present: np.ndarray,
    *,
    epochs: int,
    source: str = "image",
    codebook=None,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    progress: bool = True,
    desc: str = "reader",
):
    """A :func:`_reader` of ``source`` trained to predict ``present`` (N, K) from ``inputs``
    (uint8 images or int VQ codes) with binary cross-entropy, AdamW, ``epochs`` passes in an
    order fixed by ``seed``, and a one-cycle learning rate (a tenth of the steps warming up to
    ``lr``, then a cosine decay to nearly 0): at a constant rate for 8 epochs the same reader's
    score moved by tens of points between runs, down to naming no finding at all.
    ``codebook``: the VQ's ``(codebook_size, dim)`` vectors (code readers)."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    reader = _reader(present.shape[1], source, codebook)
    optimizer = torch.optim.AdamW(reader.parameters(), lr, weight_decay=0.01)
    x, y = torch.from_numpy(inputs), torch.from_numpy(present.astype(np.float32))
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    reader.train()
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                logits = reader(x[batch])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return reader.eval()


def reader_logits(reader, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float (N, K): the reader's logit for each finding key in each input."""
    import torch

    with torch.inference_mode():
        logits = [
            reader(torch.from_numpy(inputs[start : start + batch_size]))
            for start in range(0, len(inputs), batch_size)
        ]
    return torch.cat(logits).float().numpy()


def read_findings(reader, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """bool (N, K): the findings ``reader`` sees in each input (probability above one half)."""
    return reader_logits(reader, inputs, batch_size) > 0


def finding_auroc(logits: np.ndarray, probe: ProbeSet) -> dict:
    """How well a reader's logits (:func:`reader_logits` on every prior of ``probe``) tell the
    held-out priors that hold each finding from those that do not, whatever the threshold: the
    AUROC per finding type (the mean over its sides; None where the held-out priors lack one of
    the two classes). 0.5 is chance: the reader cannot see that finding at all."""
    from progemu_lite.evaluation.classifier import auroc

    held_out = ~probe.train
    per_key = [
        auroc(logits[held_out, k], probe.present[held_out, k].astype(int))
        for k in range(len(PROBE_KEYS))
    ]
    result = {}
    for name in FINDINGS:
        values = [v for (finding, _), v in zip(PROBE_KEYS, per_key, strict=True) if finding == name]
        values = [v for v in values if not np.isnan(v)]
        result[name] = float(np.mean(values)) if values else None
    return result


def score_reading(seen: np.ndarray, probe: ProbeSet) -> dict:
    """How a reading (:func:`read_findings` on every prior of ``probe``) fares on the held-out
    pairs: ``stable_recall`` (share of annotated stable findings seen in the prior), per finding
    type (sides pooled) as ``[seen, annotated]``, the same per finding type and severity word
    (``by_severity``), and ``precision`` (share of findings seen in a held-out prior that it
    holds)."""
    grades = np.asarray(probe.pair_stable, dtype=np.int8)
    stable = grades > 0
    hits = seen[probe.pair_image] & stable
    held_out = ~probe.train
    claimed = seen[held_out]
    by_finding, by_severity = {}, {}
    for name, spec in FINDINGS.items():
        columns = [k for k, (finding, _) in enumerate(PROBE_KEYS) if finding == name]
        by_finding[name] = [int(hits[:, columns].sum()), int(stable[:, columns].sum())]
        by_severity[name] = {
            word: [
                int((hits[:, columns] & (grades[:, columns] == grade)).sum()),
                int((grades[:, columns] == grade).sum()),
            ]
            for grade, word in enumerate(spec.severity_words, start=1)
        }
    annotated = int(stable.sum())
    return {
        "stable_recall": float(hits.sum() / annotated) if annotated else float("nan"),
        "stable_seen": int(hits.sum()),
        "stable_annotated": annotated,
        "precision": float((claimed & probe.present[held_out]).sum() / max(1, claimed.sum())),
        "claimed": int(claimed.sum()),  # 0: the reader answers "nothing" (training collapsed)
        "by_finding": by_finding,
        "by_severity": by_severity,
    }


def recall_by_grade(score: dict) -> list[tuple[int, int]]:
    """``[(seen, annotated)]`` for grades 1 to 3 (each finding's mildest to most severe
    severity word), pooled over finding types, from :func:`score_reading`'s ``by_severity``."""
    totals = [[0, 0], [0, 0], [0, 0]]
    for finding, words in score["by_severity"].items():
        for grade, word in enumerate(FINDINGS[finding].severity_words):
            seen, annotated = words.get(word, (0, 0))
            totals[grade][0] += seen
            totals[grade][1] += annotated
    return [tuple(t) for t in totals]


def round_trip(vqmodel, images: np.ndarray, *, batch_size: int = 256, progress: bool = True):
    """``(codes, reconstructions)``: the VQ codes of uint8 ``images`` and the images decoded
    from them (with a progress bar)."""
    import torch
    from tqdm.auto import tqdm

    from progemu_lite.tokenization.vq import decode_codes, encode_images

    codes, recons = [], []
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(images), batch_size),
            desc="VQ round trip",
            unit="chunk",
            disable=not progress,
        ):
            codes.append(encode_images(vqmodel, images[start : start + batch_size]))
            recons.append(decode_codes(vqmodel, codes[-1]))
    return np.concatenate(codes), np.concatenate(recons)


def probe_vq(
    vqmodel, probe: ProbeSet, *, epochs: int = READER_EPOCHS, seed: int = 0, progress: bool = True
):
    """Train and score four readers with the same seed and order (:data:`READERS`): of the
    original priors, of their VQ round trips, and of their codes through a learnt embedding
    and through the codebook; returns the report (each score, and round trip / pixels recall)."""
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    codes, recons = round_trip(vqmodel, probe.images, progress=progress)
    inputs = {"pixels": probe.images, "round_trip": recons, "codes": codes, "codebook": codes}
    codebook = vqmodel.quantize.embedding.weight
    report = {"epochs": epochs, "seed": seed, "n_train_images": probe.n_train}
    report["n_held_out_pairs"] = len(probe.pair_image)
    for key, source, label in READERS:
        reader = train_reader(
            inputs[key][probe.train],
            probe.present[probe.train],
            epochs=epochs,
            source=source,
            codebook=codebook,
            seed=seed,
            progress=progress,
            desc=f"reader of {label}",
        )
        logits = reader_logits(reader, inputs[key])
        report[key] = score_reading(logits > 0, probe)
        report[key]["auroc"] = finding_auroc(logits, probe)
    pixels = report["pixels"]["stable_recall"]
    report["recall_ratio"] = report["round_trip"]["stable_recall"] / pixels if pixels else None
    return report


def plot_probe(report: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """Bars of stable findings seen per finding type, one per reader; saved atomically as a
    PNG at ``path``."""
    from matplotlib.figure import Figure

    from progemu_lite.files import atomic_write

    path = Path(path)
    names = list(FINDINGS)
    fig = Figure(figsize=(8.4, 3.9), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(names))
    width = 0.8 / len(READERS)
    for i, (key, _, label) in enumerate(READERS):
        score = report[key]
        rates = [
            seen / annotated if annotated else np.nan
            for seen, annotated in (score["by_finding"][n] for n in names)
        ]
        ax.bar(
            x + (i - (len(READERS) - 1) / 2) * width,
            np.array(rates) * 100,
            width,
            color=_COLORS[key],
            label=f"{label}: {score['stable_recall']:.0%} overall",
        )
    counts = [report["pixels"]["by_finding"][n][1] for n in names]
    ax.set_xticks(
        x,
        [f"{FINDINGS[n].text}\n(n={c})" for n, c in zip(names, counts, strict=True)],
        fontsize=7.5,
    )
    ax.set_ylim(0, 135)  # headroom for the legend above the bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("stable findings seen (%)")
    ax.legend(loc="upper center", ncols=2, fontsize=8)
    fig.suptitle(title or "Can a reader see the prior's findings?", fontsize=11)
    caption = (
        f"The same small CNN trunk trained ({report['epochs']} epochs, seed {report['seed']}) on "
        f"{report['n_train_images']:,} training priors to name their findings (type and side), "
        f"scored on the {report['n_held_out_pairs']:,} held-out pairs' stable findings. "
        "Simulated images; not for clinical use."
    )
    fig.text(0.5, -0.02, textwrap.fill(caption, 130), ha="center", va="top", fontsize=7)
    return atomic_write(
        path,
        lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"),
        suffix=".png",
    )
