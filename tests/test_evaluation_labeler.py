"""The finding labeler on a set of varied report sentences, field by field, and its API."""

import runpy
from pathlib import Path

import pytest

from progemu_lite.evaluation.labeler import LabeledFinding, label_report, split_sentences
from progemu_lite.phantom.findings import FINDINGS, LOCATION_TEXT, laterality

CASES = runpy.run_path(str(Path(__file__).parent / "data" / "labeler_sentences.py"))["CASES"]
FIELDS = ("finding", "location", "direction", "certainty", "severity")


def _as_tuple(f: LabeledFinding) -> tuple:
    return (f.finding, f.location, f.direction, f.certainty, f.severity_after)


def _field_accuracy():
    """Per-field accuracy over all expected findings, pairing by finding (and location)."""
    correct = dict.fromkeys(FIELDS, 0)
    total = 0
    wrong = []
    for sentence, expected in CASES:
        got = [_as_tuple(f) for f in label_report(sentence)]
        if sorted(got, key=str) != sorted(expected, key=str):
            wrong.append(f"{sentence!r}\n    expected {expected}\n    got      {got}")
        pool = list(got)
        for exp in expected:
            total += 1
            same = [g for g in pool if g[0] == exp[0]]
            best = max(
                same, key=lambda g: sum(a == b for a, b in zip(g, exp, strict=True)), default=None
            )
            if best is None:
                continue
            pool.remove(best)
            for k, name in enumerate(FIELDS):
                correct[name] += best[k] == exp[k]
        # a finding the sentence does not state counts against the finding field
        total += len(pool)
    return {name: correct[name] / total for name in FIELDS}, wrong


def test_sentence_set_is_large_and_uses_the_shared_vocabulary():
    assert len(CASES) >= 60
    for sentence, expected in CASES:
        for finding, location, direction, certainty, severity in expected:
            assert finding in FINDINGS, sentence
            assert location is None or location in LOCATION_TEXT, sentence
            assert direction in (None, "new", "worse", "better", "resolved", "stable", "absent")
            assert certainty in ("definite", "uncertain")
            assert severity is None or severity in FINDINGS[finding].severity_words, sentence
    # the set covers every finding, every direction and hedged statements
    stated = {e for _, exp in CASES for e in exp}
    assert {e[0] for e in stated} == set(FINDINGS)
    assert {e[2] for e in stated} >= {
        None,
        "new",
        "worse",
        "better",
        "resolved",
        "stable",
        "absent",
    }
    assert {e[3] for e in stated} == {"definite", "uncertain"}


def test_labeler_gets_every_sentence_right(capsys):
    accuracy, wrong = _field_accuracy()
    report = ", ".join(f"{name} {acc:.3f}" for name, acc in accuracy.items())
    with capsys.disabled():
        print(f"\nlabeler per-field accuracy on {len(CASES)} sentences: {report}")
    assert not wrong, f"per-field accuracy: {report}\n" + "\n".join(wrong)
    assert all(acc == 1.0 for acc in accuracy.values()), report


def test_report_is_split_into_sentences_and_repeats_are_kept_once():
    report = (
        "FINDINGS: The left pleural effusion has increased.\n"
        "IMPRESSION:\n1. Increased left pleural effusion.\n2. No pneumothorax."
    )
    assert split_sentences(report) == [
        "The left pleural effusion has increased.",
        "Increased left pleural effusion.",
        "No pneumothorax.",
    ]
    found = label_report(report)
    assert [_as_tuple(f) for f in found] == [
        ("pleural_effusion", "left", "worse", "definite", None),
        ("pneumothorax", None, "absent", "definite", None),
    ]
    assert found[0].sentence == "The left pleural effusion has increased."


def test_claims_laterality_and_dict_form():
    (neg,) = label_report("No pneumothorax.")
    assert not neg.is_claim
    (f,) = label_report("Small left and large right pleural effusions have decreased.")[:1]
    assert f.is_claim and f.laterality == "left"
    (lobe,) = label_report("Retrocardiac consolidation.")
    assert lobe.location == "left_lower_lobe" and lobe.laterality == "left"
    d = lobe.to_dict()
    assert d["finding"] == "consolidation" and d["laterality"] == "left"
    assert d["severity_words"] == []


def test_severity_before_and_after():
    (f,) = label_report("The right effusion has increased from small to large.")
    assert (f.severity_before, f.severity_after, f.direction) == ("small", "large", "worse")
    (g,) = label_report("Moderate pulmonary edema, previously severe.")
    assert (g.severity_before, g.severity_after, g.direction) == ("severe", "moderate", "better")


@pytest.mark.parametrize("text", ["", "   ", "Keine Auffälligkeiten.", "肺野清晰。", "...", "\n\n"])
def test_text_without_findings_gives_nothing(text):
    assert label_report(text) == []


def test_non_text_is_a_clear_error():
    assert label_report(None) == []
    with pytest.raises(TypeError, match="must be a string"):
        label_report(["No pneumothorax."])


def test_random_and_degenerate_text_never_crashes():
    import random

    rng = random.Random(7)
    words = [
        "no",
        "new",
        "left",
        "right",
        "effusion",
        "pneumothorax",
        ",",
        ".",
        ";",
        "?",
        "increased",
        "stable",
        "possible",
        "cannot",
        "exclude",
        "heart",
        "size",
        "normal",
        "enlarged",
        "opacity",
        "likely",
        "versus",
        "and",
        "or",
        "from",
        "small",
        "to",
        "now",
        "bilateral",
        "lobe",
        "base",
        "lingula",
        "has",
        "resolved",
        "longer",
        "seen",
        "mildly",
        "1.5",
        "-",
        "(",
        ")",
        ":",
        "impression",
        "1.",
        "中文",
        "ü",
    ]
    for _ in range(300):
        text = " ".join(rng.choices(words, k=rng.randint(0, 40)))
        for f in label_report(text):
            assert f.finding in FINDINGS and (f.location is None or f.location in LOCATION_TEXT)
    # a generator stuck repeating itself: one long clause
    assert label_report("the " * 2000 + "left effusion") != []


def _severity_pairs(spec):
    low, mid, high = spec.severity_words
    return {
        "new": ("absent", mid),
        "worse": (low, high),
        "better": (high, low),
        "resolved": (mid, "absent"),
        "stable": (mid, mid),
    }


def test_reads_every_change_the_phantom_text_generator_writes():
    """Our own interpretation templates, all findings, places and directions, many phrasings."""
    np = pytest.importorskip("numpy")
    from progemu_lite.phantom.progression import AnnotationEntry
    from progemu_lite.phantom.text import sentence_for

    rng = np.random.default_rng(0)
    wrong = []
    n = 0
    for name, spec in FINDINGS.items():
        for location in spec.locations:
            for direction, (before, after) in _severity_pairs(spec).items():
                entry = AnnotationEntry(name, location, direction, before, after)
                for _ in range(8):
                    sentence = sentence_for(entry, rng)
                    n += 1
                    claims = [f for f in label_report(sentence) if f.is_claim]
                    ok = (
                        len(claims) == 1
                        and claims[0].finding == name
                        and claims[0].direction == direction
                        and (
                            len(spec.locations) == 1 or claims[0].laterality == laterality(location)
                        )
                        and (direction == "resolved" or claims[0].severity_after == after)
                    )
                    if not ok:
                        wrong.append(f"{sentence!r}: {[c.to_dict() for c in claims]}")
    assert n > 800
    assert not wrong, f"{len(wrong)} of {n} wrong:\n" + "\n".join(wrong[:20])
