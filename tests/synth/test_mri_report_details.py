"""Per-study details of the synthetic brain MRI reports (issue #16): every report, normals included, names a
ventricle size and a white-matter (Fazekas) grade, and the volumes show them."""

import re

import numpy as np
import pytest

from medtf.synth.mri_reports import FAZEKAS_SPOTS, SEQUENCES, VENTRICLE_SCALES, _Patient
from medtf.synth.radiology_reports import CLASSES, write_report

T2S, FLAIR = SEQUENCES.index("t2s"), SEQUENCES.index("flair")


def _patients(class_name, n=40):
    return [_Patient(np.random.default_rng([7, i, 17]), class_name) for i in range(n)]


def _ventricle_shell(patient, scale=1.18):
    """Points on the ventricles' surface at ``scale`` x their normal size: CSF only when they are enlarged."""
    angles = np.random.default_rng(0).standard_normal((64, 3))
    angles /= np.linalg.norm(angles, axis=1, keepdims=True)
    return np.concatenate([patient.centre + [dx, -5.0, 8.0] + angles * np.array([7.0, 26.0, 15.0]) * scale
                           for dx in (-9.0, 9.0)])


@pytest.mark.parametrize("class_name", ["normal", "infarct", "hemorrhage"])
def test_ventricle_grade_is_drawn(class_name):
    """Prominent ventricles reach past the normal ventricles' outline: CSF (bright on T2*) where a normal-sized
    ventricle has brain (T2* relative to the same patient's white matter)."""
    ratios = {"normal": [], "prominent": []}
    for p in _patients(class_name):
        rng = np.random.default_rng(1)
        shell = p.sample(_ventricle_shell(p), T2S, rng).mean()
        ratios[p.ventricles].append(shell / (p.gains[T2S] * 75.0))  # white matter on T2*: 75 x gain
        assert VENTRICLE_SCALES[p.ventricles][0] <= p.ventricle_scale <= VENTRICLE_SCALES[p.ventricles][1]
    assert min(len(v) for v in ratios.values()) >= 10  # both grades drawn
    assert max(ratios["normal"]) < 1.35 < min(ratios["prominent"])


def test_fazekas_grade_is_drawn_as_flair_spots():
    for class_name in ("normal", "others", "tumor"):
        for p in _patients(class_name, 30):
            if p.subtype == "atrophy":
                assert p.ventricles == "enlarged" and p.fazekas in (0, 1)
            if p.subtype == "small_vessel":
                assert p.fazekas in (2, 3)
            low, high = FAZEKAS_SPOTS.get(p.fazekas, (0, 1))
            assert low <= len(p.spots) < high, (class_name, p.fazekas, len(p.spots))
            if len(p.spots):  # each spot is FLAIR-bright (170 vs white matter 95, grey matter 115)
                flair = p.sample(p.spots, FLAIR, np.random.default_rng(2)) / p.gains[FLAIR]
                bias = 1.0 + (p.spots - p.centre) @ p.bias[FLAIR]
                assert np.all(flair / bias > 140), flair


@pytest.mark.parametrize("class_name", CLASSES)
def test_every_report_names_the_studys_details(class_name):
    for i, p in enumerate(_patients(class_name, 20)):
        text = write_report(class_name, np.random.default_rng(i), **p.report_fields).lower()
        atrophy = re.search(r"atrophy|volume loss", text) is not None
        assert atrophy == (p.ventricles == "enlarged"), text
        if not atrophy:
            assert ("prominen" in text) == (p.ventricles == "prominent"), text
        grade = re.search(r"fazekas (?:grade )?(\d)", text)
        assert (int(grade[1]) if grade else 0) == p.fazekas, text
        if p.fazekas == 0:
            assert re.search(r"no white matter|normal white matter|white matter is unremarkable", text), text


def test_report_details_are_validated():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="ventricles 'huge'"):
        write_report("normal", rng, ventricles="huge")
    with pytest.raises(ValueError, match="ventricles 'enlarged'"):
        write_report("normal", rng, ventricles="enlarged")
    with pytest.raises(ValueError, match="fazekas 3"):
        write_report("normal", rng, fazekas=3)
