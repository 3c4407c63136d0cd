"""Short brain-MRI reports in radiology style, written from templates for the synthetic `mri-reports` cases.

Each class has several phrasings of its findings and impression; the side (left/right) and location of a finding
are filled in from the image generator, so text and image agree. Spelling varies as in real reports (haemorrhage /
hemorrhage, oedema / edema, infarct / infarction) and negations appear in every class ("No acute infarct or
haemorrhage."), so a bag-of-keywords model cannot read the class off a single word. Some reports span several
lines and contain commas, quotes and non-ASCII characters (``×``, ``–``) to exercise CSV quoting and UTF-8.

No report contains an identifier, a date or a name.

Example:
    >>> import numpy as np
    >>> text = write_report("infarct", np.random.default_rng(0), side="left", location="frontal lobe", size_mm=14)
    >>> "left" in text
    True
"""

from __future__ import annotations

import numpy as np

CLASSES = ("infarct", "tumor", "hemorrhage", "normal", "others")

_HEADERS = ("MRI brain without contrast.", "MR head, non-contrast.", "MRI BRAIN:", "Brain MRI (DWI, T2*, FLAIR).",
            "")
_TECHNIQUE = ("Technique: axial DWI (b=1000), T2* GRE and FLAIR.", "Sequences: DWI, T2*, FLAIR.", "")
_NEG_INFARCT = ("No acute infarct.", "No restricted diffusion to suggest acute infarction.",
                "No diffusion restriction.")
_NEG_BLEED = ("No haemorrhage.", "No intracranial hemorrhage.", "No susceptibility artefact to suggest blood products.")
_NEG_MASS = ("No mass lesion.", "No space-occupying lesion.", "No focal mass or mass effect.")
_NEG_ALL = ("No acute infarcts / haemorrhage / focal lesions.", "No acute infarct, haemorrhage or focal lesion.",
            "No evidence of acute infarction, intracranial hemorrhage or mass.",
            "No acute infarcts, no haemorrhage, no focal lesions.")
# ventricle size and white-matter burden, named in every report except where the finding itself says it (atrophy,
# small vessel disease)
VENTRICLE_GRADES = ("normal", "prominent", "enlarged")
_VENTRICLES = {
    "normal": ("Ventricles and sulci are normal for age.", "Normal ventricular size and configuration.",
               "The ventricles are of normal size. Midline structures are central."),
    "prominent": ("The lateral ventricles are mildly prominent; sulci within normal limits.",
                  "Mild ventricular prominence, no hydrocephalus.",
                  "Mildly prominent ventricles for age. Midline structures are central."),
}
_WHITE_MATTER = {
    0: ("No white matter signal abnormality.", "Normal white matter signal on FLAIR.",
        "The white matter is unremarkable."),
    1: ("A few punctate white matter FLAIR hyperintensities (Fazekas 1), nonspecific.",
        "Scattered punctate foci of white matter FLAIR hyperintensity, Fazekas 1.",
        "Minor nonspecific white matter FLAIR foci (Fazekas grade 1)."),
}

_FINDINGS = {
    "infarct": (
        "There is a {size} mm focus of restricted diffusion in the {side} {location}, with corresponding FLAIR "
        "hyperintensity.",
        "Area of high DWI signal in the {side} {location} ({size} mm), in keeping with an acute infarct.",
        "Acute infarction involving the {side} {location}: diffusion restriction, subtle FLAIR change, "
        "approx. {size} × {size2} mm.",
    ),
    "tumor": (
        "{size} mm heterogeneous intra-axial mass in the {side} {location} with surrounding vasogenic oedema and "
        "mild local mass effect.",
        "Space-occupying lesion centred in the {side} {location}, approx. {size} × {size2} mm, FLAIR hyperintense "
        "with perilesional edema.",
        "There is a mass in the {side} {location} measuring {size} mm, with surrounding T2/FLAIR signal change "
        "(oedema).",
    ),
    "hemorrhage": (
        "Focus of susceptibility ('blooming') on T2* in the {side} {location}, {size} mm, in keeping with "
        "haemorrhage.",
        "Intraparenchymal hemorrhage in the {side} {location} measuring approx. {size} × {size2} mm; low signal "
        "on T2*.",
        "{size} mm haematoma in the {side} {location} with marked T2* signal loss.",
    ),
    "others": {
        "small_vessel": (
            "Scattered periventricular and deep white matter FLAIR hyperintensities, in keeping with chronic "
            "small vessel ischaemic change (Fazekas {fazekas}).",
            "Multiple small T2/FLAIR white matter hyperintensities bilaterally (Fazekas {fazekas}) – likely chronic "
            "microangiopathy.",
        ),
        "atrophy": (
            "Generalised cerebral volume loss with prominent ventricles and sulci, more than expected for age.",
            "Global atrophy; the lateral ventricles are enlarged in proportion to the sulci, no hydrocephalus.",
        ),
    },
}
_IMPRESSION = {
    "infarct": ("Acute {side} {location} infarct.", "Acute ischaemic stroke, {side} {location}.",
                "Findings consistent with acute infarction ({side} {location})."),
    "tumor": ("{Side} {location} mass, neoplasm favoured; further characterisation with contrast suggested.",
              "Intra-axial tumour in the {side} {location}.",
              "Mass lesion, {side} {location}, with oedema. Differential includes high-grade glioma."),
    "hemorrhage": ("Acute {side} {location} haemorrhage.", "Intracerebral hemorrhage, {side} {location}.",
                   "Haemorrhage in the {side} {location}; no acute infarct."),
    "normal": ("Normal MRI brain.", "No acute intracranial abnormality.", "Unremarkable study."),
    "others": {"small_vessel": ("Chronic small vessel disease. No acute infarct.",
                                "White matter changes of chronic microangiopathy; no acute abnormality."),
               "atrophy": ("Cerebral atrophy. No acute intracranial abnormality.",
                           "Generalised volume loss; no acute infarct or haemorrhage.")},
}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def write_report(class_name: str, rng: np.random.Generator, side: str = "", location: str = "",
                 size_mm: float = 0.0, subtype: str = "", ventricles: str = "normal", fazekas: int = 0) -> str:
    """One report for a case of ``class_name``.

    Args:
        class_name: one of `CLASSES`.
        rng: random generator (the wording is drawn from it).
        side: ``"left"`` or ``"right"`` (the patient's side) for focal findings.
        location: anatomical location of the finding, e.g. ``"frontal lobe"``.
        size_mm: largest diameter of the finding in mm.
        subtype: for ``others``: ``"small_vessel"`` or ``"atrophy"``.
        ventricles: ventricle size, one of `VENTRICLE_GRADES` (``"enlarged"`` only with atrophy, whose finding
            says it).
        fazekas: white-matter hyperintensity grade: 0 or 1 (a sentence of its own), 2-3 with small vessel disease
            (in its finding; 0 there draws 1 or 2).

    Returns:
        The report text (``\\n`` between sections; may be several lines).
    """
    if class_name not in CLASSES:
        raise ValueError(f"unknown class {class_name!r}; expected one of {CLASSES}")
    if ventricles not in VENTRICLE_GRADES or (ventricles == "enlarged") != (subtype == "atrophy"):
        raise ValueError(f"ventricles {ventricles!r}: expected one of {VENTRICLE_GRADES} ('enlarged' with atrophy)")
    if fazekas not in (0, 1, 2, 3) or (fazekas > 1 and subtype != "small_vessel"):
        raise ValueError(f"fazekas {fazekas!r}: expected 0-1, or 2-3 with small vessel disease")
    fill = {"side": side, "Side": side.capitalize(), "location": location, "size": int(round(size_mm)),
            "size2": max(3, int(round(size_mm * rng.uniform(0.6, 0.9)))),
            "fazekas": fazekas or int(rng.integers(1, 3))}
    details = []  # the study's own ventricles and white matter, unless the finding already says them
    if subtype != "atrophy":
        details.append(_pick(rng, _VENTRICLES[ventricles]))
    if subtype != "small_vessel":
        details.append(_pick(rng, _WHITE_MATTER[fazekas]))
    findings: list[str] = []
    if class_name == "normal":
        findings += [_pick(rng, _NEG_ALL), *details]
        impression = _pick(rng, _IMPRESSION["normal"])
    elif class_name == "others":
        findings += [_pick(rng, _FINDINGS["others"][subtype]).format(**fill), _pick(rng, _NEG_INFARCT),
                     _pick(rng, _NEG_BLEED), *details]
        impression = _pick(rng, _IMPRESSION["others"][subtype])
    else:
        findings.append(_pick(rng, _FINDINGS[class_name]).format(**fill))
        negations = {"infarct": (_NEG_BLEED, _NEG_MASS), "tumor": (_NEG_INFARCT, _NEG_BLEED),
                     "hemorrhage": (_NEG_MASS,)}[class_name]
        findings += [_pick(rng, n) for n in negations if rng.uniform() < 0.8] + details
        impression = _pick(rng, _IMPRESSION[class_name]).format(**fill)
    order = rng.permutation(len(findings) - 1) + 1 if len(findings) > 1 else []
    findings = [findings[0]] + [findings[i] for i in order]
    header, technique = _pick(rng, _HEADERS), _pick(rng, _TECHNIQUE)
    multiline = rng.uniform() < 0.5
    body = ("\n" if multiline else " ").join(findings)
    parts = [header, technique, ("Findings:\n" if multiline else "Findings: ") + body,
             ("Impression:\n" if multiline else "Impression: ") + impression]
    return ("\n" if multiline else " ").join(p for p in parts if p)
