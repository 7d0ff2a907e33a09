"""The progression-alignment classifier: labels, the alignment protocol, training, saving."""

import numpy as np
import pytest

from progemu_lite.evaluation.classifier import (
    N_CLASSES,
    AlignmentClassifier,
    alignment_pairs,
    auroc,
    expected_head_state,
    f1_at,
    head_keys,
    head_labels,
    presence_auroc,
    train_classifier,
    training_set,
)
from progemu_lite.evaluation.report import load_cases
from progemu_lite.phantom.dataset import PhantomConfig, generate


def entry(finding, location, direction, before, after):
    return {
        "finding": finding,
        "location": location,
        "direction": direction,
        "severity_before": before,
        "severity_after": after,
    }


def test_heads_and_labels():
    keys = head_keys()
    assert len(keys) == 12
    assert ("cardiomegaly", None) in keys and ("pulmonary_edema", "bilateral") in keys
    assert ("consolidation", "left") in keys and ("consolidation", "right") in keys
    annotation = [
        entry("consolidation", "right_lower_lobe", "worse", "patchy", "extensive"),
        entry("consolidation", "right_upper_lobe", "stable", "moderate", "moderate"),
        entry("pleural_effusion", "left", "resolved", "small", "absent"),
    ]
    before, after = head_labels(annotation, "before"), head_labels(annotation, "after")
    right = keys.index(("consolidation", "right"))
    left_eff = keys.index(("pleural_effusion", "left"))
    # a side group's severity is its worst lobe
    assert (before[right], after[right]) == (2, 3)
    assert (before[left_eff], after[left_eff]) == (1, 0)
    assert after.sum() == 3


def test_expected_state_of_a_prompt():
    annotation = [
        entry("consolidation", "right_lower_lobe", "new", "absent", "patchy"),
        entry("consolidation", "right_upper_lobe", "stable", "moderate", "moderate"),
    ]
    head = head_keys().index(("consolidation", "right"))
    prompt = {
        "finding": "consolidation",
        "location": "right_lower_lobe",
        "direction": "new",
        "severity": 1,
    }
    # the other right lobe is worse: the side group shows moderate
    assert expected_head_state(prompt, annotation) == (head, 2)
    assert expected_head_state(prompt, None) == (head, 1)
    resolved = {"finding": "nodule", "location": "lingula", "direction": "resolved", "severity": 0}
    assert expected_head_state(resolved, None) == (head_keys().index(("nodule", "left")), 0)
    assert expected_head_state({"finding": "unicorn"}, None) is None


def test_alignment_pairs_auroc_and_f1():
    probs = np.zeros((2, len(head_keys()), N_CLASSES))
    probs[0, 0] = [0.1, 0.7, 0.1, 0.1]  # case 0 expects severity 1: well aligned
    probs[1, 0] = [0.6, 0.2, 0.1, 0.1]  # case 1 expects severity 2: not aligned
    scores, labels, case_of = alignment_pairs(probs, [(0, 1), (0, 2)])
    assert len(scores) == 2 * N_CLASSES and labels.sum() == 2
    assert list(case_of) == [0] * 4 + [1] * 4
    # positives 0.7 and 0.1 against negatives 0.1, 0.1, 0.1, 0.6, 0.2, 0.1
    expected = (6 + 0.5 * 4) / (2 * 6)  # 0.7 beats all 6; 0.1 ties four, loses to two
    assert auroc(scores, labels) == pytest.approx(expected)
    assert f1_at(scores, labels) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert auroc([0.2, 0.8], [0, 1]) == 1.0 and np.isnan(auroc([0.5], [1]))


@pytest.fixture(scope="module")
def small_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate(
        root, PhantomConfig(patients=40, pairs_per_patient=3, size=64, seed=11), progress=False
    )
    return load_cases(root, "all", progress=False)


@pytest.mark.slow
def test_classifier_learns_presence_and_round_trips(small_cases, tmp_path):
    # A held-out presence AUROC needs ~1500 pairs at 128 px (minutes): here we check on a small
    # set that the training loop fits presence well above chance (0.5) on its training images.
    images, labels = training_set(small_cases.cases[:120])
    clf = train_classifier(images, labels, size=64, epochs=6, progress=False, seed=0)
    probs = clf.predict(images)
    assert probs.shape == (len(images), 12, N_CLASSES)
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert presence_auroc(probs, labels) > 0.6
    untrained = train_classifier(images[:2], labels[:2], size=64, epochs=1, progress=False)
    assert presence_auroc(untrained.predict(images), labels) < presence_auroc(probs, labels)
    test_images = images[-20:]
    probs = probs[-20:]

    clf.save(tmp_path / "clf")
    again = AlignmentClassifier.load(tmp_path / "clf")
    assert np.allclose(again.predict(test_images[:4]), probs[:4], atol=1e-6)
    assert again.features(test_images[:3]).shape == (3, 128)
    # other sizes are resized to the classifier's
    big = np.stack([np.kron(im, np.ones((2, 2), np.uint8)) for im in test_images[:2]])
    assert again.predict(big).shape == (2, 12, N_CLASSES)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        AlignmentClassifier.load(tmp_path)
    (tmp_path / "classifier.json").write_text("{broken")
    (tmp_path / "classifier.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="malformed JSON"):
        AlignmentClassifier.load(tmp_path)


def test_training_needs_annotations():
    with pytest.raises(ValueError, match="no annotated pairs"):
        training_set([])
