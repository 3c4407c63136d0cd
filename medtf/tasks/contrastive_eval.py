"""`medtf evaluate` of a contrastive (CLIP) run: retrieval, zero-shot classification, a linear probe, the report index.

Writes into ``OUTPUT`` (default ``RUN_DIR/eval-SPLIT``): ``summary.json`` (scalars under ``metrics``; the zero-shot
and linear-probe confusion matrices and per-class recalls under ``zero_shot`` / ``linear_probe``),
``per_example.csv`` (the rank table: pseudonymised ids, ranks, similarities; no report text), ``similarity.png``
and TensorBoard images in ``logs/`` (similarity matrix, confusion matrices), ``zero_shot.csv`` (class
probabilities per example) when the run's experiment has ``evaluate.zero_shot.prompts``. It also (re)writes the
training reports' embedding index ``RUN_DIR/report_index/`` that ``medtf predict RUN --query-text`` searches.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from medtf.evaluation import retrieval

INDEX_DIR, INDEX_FILE, INDEX_TEXT = "report_index", "report_index.npz", "report_index_text.json"


def logit_scale(model) -> float:
    """The model's 1 / temperature: the learned, clamped log-scale, else the fixed ``1 / temperature``."""
    if getattr(model, "learn_temperature", False):
        log_scale = float(np.asarray(model.get_layer("logit_scale").log_scale))
        return float(np.exp(np.clip(log_scale, 0.0, math.log(model.max_logit_scale))))
    return 1.0 / float(getattr(model, "temperature", 0.07))


def embed_split(model, data_dir, split: str, preprocess=None, batch_size: int = 4) -> dict:
    """``{ids, image (N, E), text (N, E), labels (N,), reports}`` of every example of ``split`` (labels -1 when
    the kind has none; reports: the raw bytes, kept in memory only)."""
    from medtf.data import make_dataset

    ds = make_dataset(data_dir, split, batch_size=batch_size, training=False, repeat=False, output="dict",
                      transforms=preprocess)
    out = {"ids": [], "image": [], "text": [], "labels": [], "reports": []}
    for batch in ds:
        out["image"].append(np.asarray(model.image_tower(batch["image"])))
        out["text"].append(np.asarray(model.text_tower(batch["report"])))
        n = len(batch["example_id"])
        out["labels"].extend(np.asarray(batch["label"]).reshape(n).tolist() if "label" in batch else [-1] * n)
        out["ids"].extend(v.decode() for v in batch["example_id"].numpy())
        out["reports"].extend(batch["report"].numpy().tolist())
    if not out["ids"]:
        raise ValueError(f"{data_dir}: split {split!r} holds no examples")
    for key in ("image", "text"):
        out[key] = np.concatenate(out[key]).astype(np.float32)
    out["labels"] = np.asarray(out["labels"], np.int64)
    return out


def write_report_index(folder, embedded: dict, with_text: bool = True) -> Path:
    """``folder/report_index.npz`` (example_id, embeddings, label) and, ``with_text``, ``folder/report_index_text.json``
    (id -> report text, read only by ``--show-text``; delete it to share the index without text)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / INDEX_FILE, example_id=np.asarray(embedded["ids"]), embeddings=embedded["text"],
             label=embedded["labels"])
    if not with_text:
        return folder / INDEX_FILE
    texts = {i: r.decode("utf-8", errors="replace") for i, r in zip(embedded["ids"], embedded["reports"])}
    (folder / INDEX_TEXT).write_text(json.dumps(texts, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder / INDEX_FILE


def read_report_index(folder) -> dict:
    """``{ids, embeddings, labels, texts (None without the text file)}`` of `write_report_index`'s folder."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report index (written by `medtf evaluate` of the run, or by "
                                f"`medtf export` when the training shards are readable)")
    with np.load(path) as f:
        index = {"ids": [str(v) for v in f["example_id"]], "embeddings": f["embeddings"], "labels": f["label"]}
    text = Path(folder) / INDEX_TEXT
    index["texts"] = json.loads(text.read_text(encoding="utf-8")) if text.is_file() else None
    return index


def class_names(data_dir) -> list[str] | None:
    """The converter's ``class_names`` (label = index) from the shard manifest, if recorded."""
    try:
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = (manifest.get("options") or {}).get("class_names")
    return list(names) if names else None


def _write_images(out: Path, similarity, confusions: dict) -> None:
    import tensorflow as tf
    from PIL import Image

    heat = retrieval.heatmap(similarity)
    Image.fromarray(heat).save(out / "similarity.png")
    with tf.summary.create_file_writer(str(out / "logs")).as_default():
        tf.summary.image("similarity", heat[None], step=0,
                         description="cosine similarity, rows: test images, columns: their reports (same order)")
        for name, matrix in confusions.items():
            tf.summary.image(f"{name}_confusion_matrix", retrieval.heatmap(matrix, cell=32)[None], step=0,
                             description=f"rows: truth, columns: prediction; counts {matrix}")


def evaluate_contrastive(task: str, run_dir, split: str = "test", checkpoint: str = "best", output=None,
                         data_dir=None, verbose: bool = True) -> dict:
    """Evaluate a contrastive run on ``split`` (see the module docstring); returns the summary."""
    from medtf.evaluation.report import write_summary
    from medtf.evaluation.run import build_preprocess, data_dir_of, load_run

    config, model, config_path, ckpt = load_run(run_dir, checkpoint)
    data = data_dir_of(config, config_path, data_dir)
    out = Path(output) if output is not None else Path(run_dir) / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    preprocess = build_preprocess(config)
    settings = config.evaluate or {"linear_probe": True}
    test = embed_split(model, data, split, preprocess)
    similarity = test["image"] @ test["text"].T
    scale = logit_scale(model)
    metrics = {"n": len(test["ids"]), "logit_scale": scale, **retrieval.retrieval_metrics(similarity)}
    summary = {"task": task, "split": split, "checkpoint": str(ckpt), "metrics": metrics}
    rows = retrieval.rank_table(test["ids"], similarity)
    confusions = {}
    names = class_names(data)
    if settings.get("zero_shot"):
        prompts, indices = retrieval.prompt_classes(settings["zero_shot"]["prompts"], names)
        prompt_embeddings = retrieval.class_prompt_embeddings(model.text_tower, prompts)
        zs = retrieval.zero_shot(test["image"], prompt_embeddings, retrieval.relabel(test["labels"], indices), scale)
        classes = [names[c] if names and c < len(names) else str(c) for c in indices]
        metrics["zero_shot_accuracy"] = zs["accuracy"]
        summary["zero_shot"] = {"classes": classes, "prompts": dict(zip(classes, prompts)),
                                **{k: zs[k] for k in ("n", "excluded", "accuracy", "per_class_recall",
                                                      "confusion_matrix")}}
        confusions["zero_shot"] = zs["confusion_matrix"]
        with open(out / "zero_shot.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["example_id", "label", "predicted", *[f"p_{c}" for c in classes]])
            for i, label, p in zip(test["ids"], test["labels"], zs["probabilities"]):
                true = names[label] if names and 0 <= label < len(names) else int(label)
                writer.writerow([i, true, classes[int(p.argmax())], *[f"{v:.6f}" for v in p]])
    # The training split: the linear probe's fit and the report index `medtf predict RUN --query-text` searches.
    train = embed_split(model, data, config.data.train_split, preprocess)
    write_report_index(Path(run_dir) / INDEX_DIR, train)
    if settings.get("linear_probe") and (train["labels"] >= 0).any():
        c = settings["linear_probe"].get("c", 1.0) if isinstance(settings["linear_probe"], dict) else 1.0
        probe = retrieval.linear_probe(train["image"], train["labels"], test["image"], test["labels"], c=c)
        metrics["linear_probe_accuracy"] = probe["accuracy"]
        summary["linear_probe"] = {**probe, "classes": [names[k] if names and k < len(names) else k
                                                        for k in probe["classes"]], "c": c}
        confusions["linear_probe"] = probe["confusion_matrix"]
    with open(out / "per_example.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _write_images(out, similarity, confusions)
    write_summary(summary, out / "summary.json")
    if verbose:
        print(" ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "n"))
    return summary
