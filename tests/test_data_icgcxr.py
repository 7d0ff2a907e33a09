import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from progemu_lite.data.icgcxr import (
    PairRecord,
    iter_pairs,
    load_pair_images,
    read_pair,
    remove_stale_temp_folders,
    write_pair,
)
from progemu_lite.phantom.progression import AnnotationEntry

MIMIC_PAIR = "50414267_53189527"


def write_mimic_fixture(root: Path) -> Path:
    """A pair laid out exactly like a real ICG-CXR download of MIMIC-CXR, fields as there."""
    folder = root / "mimic_cxr" / "pa" / "1" / "p10" / "p10000032" / MIMIC_PAIR
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    prior = rng.integers(0, 256, (512, 512), dtype=np.uint8)
    Image.fromarray(prior, mode="L").save(folder / f"{MIMIC_PAIR}-ref-reg.png")
    # A follow-up saved as RGB, as some exports are.
    followup = np.stack([prior] * 3, axis=-1)
    Image.fromarray(followup, mode="RGB").save(folder / f"{MIMIC_PAIR}-flu-reg.png")
    data = {
        "subject-id": 10000032,
        "split": "test",
        "view": "PA",
        "time-interval": "2 months",
        "progression-description": "Small left pleural effusion has developed.",
        "changes-of-findings": "New small left pleural effusion. No pneumothorax.",
        "reference-diseases": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -100, -100, -100],
        "followup-diseases": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, -100, -100, -100],
        "study-ids": [50414267, 53189527],
    }
    (folder / f"{MIMIC_PAIR}.json").write_text(json.dumps(data))
    return folder


def test_reads_a_real_mimic_nesting(tmp_path):
    folder = write_mimic_fixture(tmp_path)
    records = list(iter_pairs(tmp_path))
    assert len(records) == 1
    record = records[0]
    assert record.pair_id == MIMIC_PAIR
    assert record.folder == folder
    assert record.subject_id == "10000032"
    assert record.split == "test" and record.view == "PA"
    assert record.time_interval == "2 months"
    assert record.prompt.startswith("Small left pleural effusion")
    assert record.followup_labels[10] == 1 and record.reference_labels[-1] == -100
    assert record.annotation is None
    assert record.extra == {"study-ids": [50414267, 53189527]}
    prior, followup = load_pair_images(record)
    assert prior.shape == followup.shape == (512, 512)
    assert prior.dtype == followup.dtype == np.uint8
    np.testing.assert_array_equal(prior, followup)
    assert list(iter_pairs(tmp_path, split="test")) == records
    assert list(iter_pairs(tmp_path, split="train")) == []


def test_missing_optional_fields_are_tolerated(tmp_path):
    folder = tmp_path / "chexpert_plus" / "pa" / "patient00042" / "pair1"
    folder.mkdir(parents=True)
    (folder / "pair1.json").write_text(
        json.dumps({"progression-description": "Edema improves.", "changes-of-findings": "x"})
    )
    (record,) = iter_pairs(tmp_path)
    assert record.subject_id == "patient00042"  # from the patient folder
    assert record.split is record.view is record.time_interval is None
    assert record.reference_labels is None and record.followup_labels is None
    with pytest.raises(FileNotFoundError, match="pair1-ref-reg.png"):
        load_pair_images(record)


def test_malformed_json_names_the_file(tmp_path):
    folder = tmp_path / "mimic_cxr" / "pa" / "p1" / "bad"
    folder.mkdir(parents=True)
    (folder / "bad.json").write_text('{"progression-description": "x",')
    with pytest.raises(ValueError, match=r"bad\.json: malformed JSON"):
        list(iter_pairs(tmp_path))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"changes-of-findings": "x"}, "missing required field 'progression-description'"),
        ([1, 2], "expected a JSON object"),
        ({"progression-description": "x", "followup-diseases": [1, 0]}, "14 numeric"),
        (
            {"progression-description": "x", "expert-annotation": [{"finding": "x"}]},
            "bad 'expert-annotation'",
        ),
    ],
)
def test_invalid_fields_name_the_file(tmp_path, data, message):
    folder = tmp_path / "p" / "pair"
    folder.mkdir(parents=True)
    (folder / "pair.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as info:
        read_pair(folder)
    assert "pair.json" in str(info.value)


def make_record(folder="simulated/pa/sim000001/sim000001_00", **extra):
    return PairRecord(
        pair_id=Path(folder).name,
        folder=Path(folder),
        prompt="Moderate pleural effusion has developed in the left lower lung.",
        interpretation="New moderate left pleural effusion. No pneumothorax.",
        split="train",
        subject_id="sim000001",
        annotation=[AnnotationEntry("pleural_effusion", "left", "new", "absent", "moderate")],
        reference_labels=[1] + [0] * 10 + [-100] * 3,
        followup_labels=[0] * 10 + [1] + [-100] * 3,
        time_interval=30,
        view="PA",
        extra=extra,
    )


def test_write_then_read_round_trip(tmp_path):
    prior = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    followup = 255 - prior
    record = make_record()
    folder = write_pair(tmp_path, record, prior, followup)
    assert sorted(p.name for p in folder.iterdir()) == [
        "sim000001_00-flu-reg.png",
        "sim000001_00-ref-reg.png",
        "sim000001_00.json",
    ]
    (read,) = iter_pairs(tmp_path)
    assert read.annotation == record.annotation
    assert (read.prompt, read.interpretation, read.split) == (
        record.prompt,
        record.interpretation,
        "train",
    )
    assert read.followup_labels == record.followup_labels and read.time_interval == 30
    got_prior, got_followup = load_pair_images(read)
    np.testing.assert_array_equal(got_prior, prior)
    np.testing.assert_array_equal(got_followup, followup)
    with pytest.raises(FileExistsError, match="already exists"):
        write_pair(tmp_path, record, prior, followup)
    write_pair(tmp_path, record, followup, prior, overwrite=True)
    np.testing.assert_array_equal(load_pair_images(read)[0], followup)
    assert [p.name for p in folder.parent.iterdir()] == ["sim000001_00"]


def test_a_failed_write_leaves_nothing(tmp_path):
    image = np.zeros((64, 64), np.uint8)
    # Not JSON-serialisable: fails after both PNGs were written into the temporary folder.
    record = make_record(unserialisable=object())
    with pytest.raises(TypeError):
        write_pair(tmp_path, record, image, image)
    patient = tmp_path / "simulated" / "pa" / "sim000001"
    assert list(patient.iterdir()) == []
    with pytest.raises(ValueError, match="2-D uint8"):
        write_pair(tmp_path, make_record(), image.astype(np.float32), image)
    with pytest.raises(ValueError, match="differ in size"):
        write_pair(tmp_path, make_record(), image, np.zeros((32, 32), np.uint8))
    assert list(patient.iterdir()) == []


def test_stale_temp_folders_are_skipped_and_removed(tmp_path):
    image = np.zeros((32, 32), np.uint8)
    write_pair(tmp_path, make_record(), image, image)
    # What a writer killed mid-pair leaves behind.
    stale = tmp_path / "simulated" / "pa" / "sim000001" / ".tmp-sim000001_01-abc"
    stale.mkdir()
    (stale / "sim000001_01.json").write_text("{")
    assert [r.pair_id for r in iter_pairs(tmp_path)] == ["sim000001_00"]
    assert remove_stale_temp_folders(tmp_path) == 1
    assert not stale.exists()


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ICG-CXR folder"):
        list(iter_pairs(tmp_path / "nope"))
