"""An auxiliary training loss that asks the decoder to read the prior's findings.

The interpretation reports the prior's findings that stay ("Stable small left pneumothorax."),
which only reading the prior image can give. The language-model loss teaches that reading
through a handful of interpretation tokens per sequence; ``train --reading-loss-weight W`` adds a
direct signal: a linear probe on the decoder's final hidden state at the prior's
``<|image end|>`` (the position that has just seen the whole prior, and that every later token
can attend to) predicts the prior's 14 CheXpert labels (ICG-CXR's ``reference-diseases``,
which the real dataset carries as well), with binary cross-entropy over the known labels. The
probe is a training aid only: it is checkpointed for ``--resume`` but not part of the saved
pipeline, whose weights stay transformers' Emu3. Measured on the shipped ``lite`` weights, it
did not move the stable findings reported (docs/model_card.md, Training).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from progemu_lite.phantom.findings import CHEXPERT_LABELS

UNKNOWN_LABEL = -100  # ICG-CXR's "missing"; also what any value other than 0 or 1 becomes


def prior_label_vector(reference_labels: Sequence[int] | None) -> np.ndarray:
    """A record's ``reference-diseases`` as int8 targets: 1 present, 0 absent, -100 unknown
    (missing labels, and CheXpert's -1 "uncertain")."""
    out = np.full(len(CHEXPERT_LABELS), UNKNOWN_LABEL, dtype=np.int8)
    if reference_labels is not None:
        values = np.asarray(reference_labels)
        out[values == 0] = 0
        out[values == 1] = 1
    return out


class ReadingHead(torch.nn.Module):
    """A linear probe from the decoder's hidden size to one logit per CheXpert label."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, len(CHEXPERT_LABELS))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden)


class FinalHiddenStates:
    """Keeps the output of the decoder's final norm (the states the LM head reads) from the
    last forward pass; a forward hook, so it works whatever wraps the model (DDP, FSDP)."""

    def __init__(self, model):
        self.states: torch.Tensor | None = None
        self._handle = model.model.text_model.norm.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.states = output

    def take(self) -> torch.Tensor:
        states, self.states = self.states, None
        if states is None:
            raise RuntimeError("no forward pass ran since the last take()")
        return states

    def remove(self) -> None:
        self._handle.remove()


def prior_end_positions(input_ids: torch.Tensor, eoi_id: int) -> torch.Tensor:
    """Per row, the position of the prior's ``<|image end|>`` (the first of the row's two), or
    -1 where the row has no prior image (the null condition keeps the follow-up's only)."""
    is_eoi = input_ids == eoi_id
    first = torch.argmax(is_eoi.int(), dim=1)
    has_prior = is_eoi.sum(dim=1) >= 2
    return torch.where(has_prior, first, torch.full_like(first, -1))


def reading_loss(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    prior_labels: torch.Tensor,
    eoi_id: int,
) -> torch.Tensor:
    """Mean binary cross-entropy of the head's predictions at each row's prior ``<|image end|>``
    over the known labels; zero (with a graph) when the batch has none to score."""
    positions = prior_end_positions(input_ids, eoi_id)
    rows = torch.nonzero(positions >= 0).squeeze(1)
    states = hidden[rows, positions[rows]]
    logits = head(states.to(next(head.parameters()).dtype)).float()  # head may be DDP-wrapped
    targets = prior_labels[rows]
    known = targets != UNKNOWN_LABEL
    if not bool(known.any()):
        return logits.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(
        logits[known], targets[known].float()
    )
