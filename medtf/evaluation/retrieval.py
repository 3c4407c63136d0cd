"""Image-report retrieval, zero-shot classification and linear probes on dual-encoder embeddings (NumPy only).

Conventions: ``similarity[i, j]`` is the cosine of image ``i`` and report ``j`` (rows: images, columns: reports;
example ``i``'s own pair is the diagonal). A rank is 1 + the number of candidates strictly more similar than the own
one (ties count in the example's favour). Report text never enters these functions: tables carry ids only.

Reference: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021
(zero-shot classification from class prompts, linear probes on frozen embeddings).
"""

from __future__ import annotations

import re

from typing import Mapping, Sequence

import numpy as np

DIRECTIONS = ("image_to_report", "report_to_image")


def own_ranks(similarity) -> tuple[np.ndarray, np.ndarray]:
    """``(image_to_report (N,), report_to_image (N,))``: rank of image ``i``'s own report among all reports, and of
    report ``j``'s own image among all images, for a square ``(N, N)`` similarity matrix."""
    s = np.asarray(similarity, np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"retrieval needs a square (N, N) image x report similarity matrix, got shape {s.shape}")
    own = np.diag(s)
    return 1 + (s > own[:, None]).sum(axis=1), 1 + (s > own[None, :]).sum(axis=0)


def retrieval_metrics(similarity, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k, median and mean rank of the own pair in both directions (keys ``image_to_report_recall_at_1``,
    ``report_to_image_median_rank`` ...)."""
    metrics = {}
    for name, ranks in zip(DIRECTIONS, own_ranks(similarity)):
        metrics.update({f"{name}_recall_at_{k}": float((ranks <= k).mean()) for k in ks})
        metrics.update({f"{name}_median_rank": float(np.median(ranks)), f"{name}_mean_rank": float(ranks.mean())})
    return metrics


def rank_table(ids: Sequence[str], similarity) -> list[dict]:
    """One row per example: its ranks in both directions, the own-pair similarity, and the id and similarity of the
    nearest report to its image (pseudonymised ids only)."""
    s = np.asarray(similarity, np.float64)
    image_rank, text_rank = own_ranks(s)
    nearest = s.argmax(axis=1)
    return [{"example_id": ids[i], "image_to_report_rank": int(image_rank[i]),
             "report_to_image_rank": int(text_rank[i]), "own_similarity": round(float(s[i, i]), 6),
             "nearest_report_id": ids[nearest[i]], "nearest_report_similarity": round(float(s[i, nearest[i]]), 6)}
            for i in range(len(ids))]


def top_k(query, index, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``(indices (Q, k), scores (Q, k))``: the ``k`` rows of ``index (M, E)`` most similar to each ``query (Q, E)``
    (dot products of L2-normalised embeddings = cosine), best first; ties keep the index order."""
    scores = np.asarray(query, np.float64).reshape(-1, np.shape(index)[-1]) @ np.asarray(index, np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def softmax(logits, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def classification_scores(labels, predicted, num_classes: int) -> dict:
    """Accuracy, per-class recall (None for a class without examples) and the confusion matrix (rows: truth,
    columns: prediction)."""
    labels, predicted = np.asarray(labels, int).ravel(), np.asarray(predicted, int).ravel()
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    recall = [float(confusion[c, c] / support[c]) if support[c] else None for c in range(num_classes)]
    return {"n": int(labels.size), "accuracy": float((labels == predicted).mean()) if labels.size else float("nan"),
            "per_class_recall": recall, "confusion_matrix": confusion.tolist()}


def zero_shot(image_embeddings, prompt_embeddings, labels, scale: float = 1.0) -> dict:
    """Zero-shot classification: class ``c``'s probability is ``softmax_c(scale * cos(image, prompt_c))``.

    Args:
        image_embeddings: ``(N, E)`` L2-normalised.
        prompt_embeddings: ``(K, E)`` L2-normalised, one per class (`class_prompt_embeddings`), in class order.
        labels: ``(N,)`` true class indices into the prompts; examples with a label outside ``[0, K)`` (a class
            without a prompt, or unknown) are left out and counted in ``excluded``.
        scale: the model's logit scale (1 / temperature); it changes the probabilities, not the predictions.

    Returns ``{probabilities (N, K), predicted (N,), accuracy, per_class_recall, confusion_matrix, n, excluded}``.
    """
    probs = softmax(scale * np.asarray(image_embeddings, np.float64) @ np.asarray(prompt_embeddings, np.float64).T)
    predicted = probs.argmax(axis=1)
    labels = np.asarray(labels, np.int64).ravel()
    keep = (labels >= 0) & (labels < probs.shape[1])
    scores = classification_scores(labels[keep], predicted[keep], probs.shape[1])
    return {"probabilities": probs, "predicted": predicted, **scores, "excluded": int((~keep).sum())}


def _prompt_texts(value, where: str) -> str | list[str]:
    """One prompt text, or a non-empty list of them (a prompt ensemble); ValueError names ``where``."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [str(v) for v in value]
    raise ValueError(f"{where}: expected a non-empty prompt text or a non-empty list of them, got {value!r}")


_ALTERNATIVES = re.compile(r"\{([^{}]*\|[^{}]*)\}")


def expand_prompt(text: str) -> list[str]:
    """Every wording of a prompt template: each ``{a|b|...}`` is replaced by each alternative (all combinations, in
    order), e.g. ``"acute infarct, {left|right} {frontal lobe|basal ganglia}"`` -> 4 prompts. Braces without a
    ``|`` are kept as written."""
    match = _ALTERNATIVES.search(text)
    if match is None:
        return [text]
    head, tail = text[:match.start()], text[match.end():]
    return [w for option in match.group(1).split("|") for w in expand_prompt(head + option + tail)]


def prompt_classes(prompts: Mapping[str, str | Sequence[str]], class_names: Sequence[str] | None
                   ) -> tuple[list[str | list[str]], list[int]]:
    """``(prompts, label index of each)``: ``prompts`` maps class names (the converter's ``class_names``, e.g.
    ``normal``) or label indices to a prompt text or a list of them (an ensemble, `class_prompt_embeddings`);
    ``{a|b}`` alternatives are expanded (`expand_prompt`)."""
    texts, indices = [], []
    for key, text in prompts.items():
        if class_names is not None and str(key) in class_names:
            indices.append(list(class_names).index(str(key)))
        elif str(key).lstrip("-").isdigit():
            indices.append(int(key))
        else:
            raise ValueError(f"evaluate.zero_shot.prompts: class {key!r} is not one of the data's classes "
                             f"{list(class_names) if class_names is not None else '(none recorded)'}")
        checked = _prompt_texts(text, f"evaluate.zero_shot.prompts.{key}")
        wordings = [w for t in ([checked] if isinstance(checked, str) else checked) for w in expand_prompt(t)]
        texts.append(wordings[0] if len(wordings) == 1 else wordings)
    if len(set(indices)) != len(indices) or len(indices) < 2:
        raise ValueError(f"evaluate.zero_shot.prompts: need one prompt per class for at least 2 distinct classes, "
                         f"got {list(prompts)}")
    return texts, indices


def class_prompt_embeddings(embed, prompts: Sequence[str | Sequence[str]]) -> np.ndarray:
    """``(K, E)`` L2-normalised class embeddings: ``embed`` (report strings ``(M,)`` -> L2-normalised ``(M, E)``)
    of each class's prompt, or the re-normalised mean over a class's list of prompts (a prompt ensemble, as CLIP's
    templates: one wording of a class sits wherever its particular side, lobe or grade puts it; the mean of
    several wordings sits nearer the class's centre)."""
    groups = [[p] if isinstance(p, str) else list(p) for p in prompts]
    flat = np.asarray(embed(np.asarray([t for g in groups for t in g], dtype=object)), np.float64)
    bounds = np.cumsum([0] + [len(g) for g in groups])
    means = np.stack([flat[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def relabel(labels, class_indices: Sequence[int]) -> np.ndarray:
    """Data labels -> positions in ``class_indices`` (the prompts' order); -1 for classes without a prompt."""
    lookup = {c: k for k, c in enumerate(class_indices)}
    return np.asarray([lookup.get(int(v), -1) for v in np.asarray(labels).ravel()], np.int64)


def linear_probe(train_x, train_y, test_x, test_y, c: float = 1.0, seed: int = 0) -> dict:
    """Multinomial logistic regression (scikit-learn, L2 penalty ``1 / c``) fitted on frozen train embeddings,
    scored on the test embeddings: accuracy, per-class recall, confusion matrix over the train classes."""
    from sklearn.linear_model import LogisticRegression

    train_y, test_y = np.asarray(train_y, int).ravel(), np.asarray(test_y, int).ravel()
    known = train_y >= 0
    classes = np.unique(train_y[known])
    if classes.size < 2:
        raise ValueError(f"linear probe: the training embeddings hold {classes.size} class(es); it needs 2 or more")
    probe = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(np.asarray(train_x)[known], train_y[known])
    keep = np.isin(test_y, classes)
    predicted = probe.predict(np.asarray(test_x)[keep]) if keep.any() else np.zeros(0, int)
    position = {int(v): k for k, v in enumerate(classes)}
    scores = classification_scores([position[int(v)] for v in test_y[keep]],
                                   [position[int(v)] for v in predicted], classes.size)
    return {"classes": classes.tolist(), **scores, "excluded": int((~keep).sum())}


def heatmap(matrix, cell: int = 8) -> np.ndarray:
    """``(N, M)`` values -> ``(N * cell, M * cell, 3)`` uint8: blue (low) to red (high), scaled to the matrix's
    range, each entry a ``cell`` x ``cell`` block (the similarity-matrix image)."""
    m = np.asarray(matrix, np.float64)
    low, high = float(m.min()), float(m.max())
    t = (m - low) / (high - low) if high > low else np.zeros_like(m)
    rgb = np.stack([t, 1.0 - np.abs(2.0 * t - 1.0), 1.0 - t], axis=-1)
    return np.kron((255 * rgb).round().astype(np.uint8), np.ones((cell, cell, 1), np.uint8))


def parse_evaluate_settings(raw, key: str = "evaluate") -> dict | None:
    """The experiment's ``evaluate`` section, checked: ``{zero_shot: {prompts: {CLASS: TEXT}}, linear_probe: true |
    false | {c: FLOAT}}`` (plain mapping, as stored in config.yaml); ValueError names the key."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{key}: expected a mapping such as {{zero_shot: {{prompts: {{normal: ...}}}}}}, got {raw!r}")
    unknown = sorted(set(raw) - {"zero_shot", "linear_probe"})
    if unknown:
        raise ValueError(f"{key}: unknown setting(s) {unknown}; known: zero_shot, linear_probe")
    out = {}
    if raw.get("zero_shot") is not None:
        zs = raw["zero_shot"]
        prompts = zs.get("prompts") if isinstance(zs, Mapping) else None
        if not isinstance(zs, Mapping) or set(zs) != {"prompts"} or not isinstance(prompts, Mapping):
            raise ValueError(f"{key}.zero_shot: expected {{prompts: {{CLASS: TEXT, ...}}}}, got {zs!r}")
        checked = {str(name): _prompt_texts(text, f"{key}.zero_shot.prompts.{name}") for name, text in prompts.items()}
        if len(prompts) < 2:
            raise ValueError(f"{key}.zero_shot.prompts: at least 2 classes are needed, got {list(prompts)}")
        out["zero_shot"] = {"prompts": checked}
    probe = raw.get("linear_probe", True)
    if isinstance(probe, Mapping):
        if set(probe) - {"c"} or not isinstance(probe.get("c", 1.0), (int, float)) or probe.get("c", 1.0) <= 0:
            raise ValueError(f"{key}.linear_probe: expected true, false or {{c: POSITIVE}}, got {probe!r}")
        probe = {"c": float(probe.get("c", 1.0))}
    elif not isinstance(probe, bool):
        raise ValueError(f"{key}.linear_probe: expected true, false or {{c: POSITIVE}}, got {probe!r}")
    out["linear_probe"] = probe
    return out
