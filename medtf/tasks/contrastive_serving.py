"""Export and predict of contrastive (CLIP) models: embedding signatures, the stored report index, retrieval.

Export (`export_contrastive`): one SavedModel with ``serving_default`` (raw ``images`` -> ``image_embeddings``, as
before), ``embed_image`` (the same), ``embed_text`` (raw report strings -> ``text_embeddings``, tokenised inside),
``encode_text`` (its older name), ``similarity`` (``images``, ``reports`` -> cosine ``similarity (Bi, Bt)`` and
``logits`` = logit scale x cosine) and ``preprocess``; next to it ``report_index.npz`` (the training reports'
embeddings and pseudonymised ids, `medtf.tasks.contrastive_eval.write_report_index`; no report text) and ``zero_shot.json`` (the
experiment's class prompts). A keras-hub text tower puts tensorflow-text ops in the graph: a loader must
``import tensorflow_text`` first.

Predict (`predict_contrastive`): ``MODEL`` is an exported model or a run directory (its checkpoint and the index
``medtf evaluate`` wrote). Inputs are mri-reports case folders (one NIfTI per sequence, the converter's layout and
options from ``medtf.json``), a folder of such case folders, or plain image files; each gets its embedding, the top-k
training reports (ids + cosine) and, with prompts, zero-shot class probabilities. ``query_text`` instead retrieves
the reports nearest to a text. Report text is printed / written only with ``show_text`` (PHI).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medtf.evaluation import retrieval
from medtf.tasks.contrastive_eval import INDEX_DIR, embed_split, logit_scale, read_report_index, write_report_index

ZERO_SHOT_FILE = "zero_shot.json"
log = logging.getLogger("medtf.export")


def export_contrastive(task: str, run_dir, checkpoint="best", output=None, version=None, name=None,
                       threshold: float = 0.5, data_dir=None) -> Path:
    """Write the SavedModel (see the module docstring); returns its version folder."""
    import tensorflow as tf

    from medtf.evaluation.run import build_preprocess
    from medtf.export.normalization import Preprocessor
    from medtf.export.saved_model import load_checkpoint, read_run
    from medtf.tasks.classification import export_classifier
    from medtf.tasks.contrastive_eval import class_names

    run_dir = Path(run_dir)
    config = read_run(run_dir)
    ckpt = Path(checkpoint) if checkpoint not in ("best", "last") else run_dir / "checkpoints" / f"{checkpoint}.keras"
    model = load_checkpoint(ckpt)
    image_tower = model._tower("image")
    preprocessor = Preprocessor(config["data"]["kind"], config["data"].get("preprocess"))
    scale = tf.constant(logit_scale(model), tf.float32)
    channels = int(image_tower.inputs[0].shape[-1])
    images_spec = tf.TensorSpec((None,) * (model.spatial_dims + 1) + (channels,), tf.float32, name="images")
    reports_spec = tf.TensorSpec([None], tf.string, name="reports")

    def text(reports):
        return tf.cast(model.text_tower(reports, training=False), tf.float32)

    def image(images):
        return tf.cast(image_tower(preprocessor.batch(images), training=False), tf.float32)

    def embed_text(reports):
        """reports (strings) -> text_embeddings (B, E), L2-normalised (tokenised inside)"""
        return {"text_embeddings": text(reports)}

    def embed_image(images):
        """raw images -> image_embeddings (B, E), L2-normalised (preprocessed inside)"""
        return {"image_embeddings": image(images)}

    def similarity(images, reports):
        """raw images (Bi) and reports (Bt) -> similarity (Bi, Bt) cosine and logits = logit scale x cosine"""
        cosine = tf.matmul(image(images), text(reports), transpose_b=True)
        return {"similarity": cosine, "logits": scale * cosine}

    target = export_classifier(
        task, run_dir, checkpoint, output, version, name, threshold, {"image_embeddings": None},
        extra_signatures={"embed_image": ([images_spec], embed_image), "embed_text": ([reports_spec], embed_text),
                          "encode_text": ([reports_spec], embed_text),
                          "similarity": ([images_spec, reports_spec], similarity)},
        image_model=image_tower)
    meta_path = target / "medtf.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["logit_scale"] = float(scale.numpy())
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    data = Path(data_dir) if data_dir is not None else Path(str(config["data"].get("dir", "")))
    names = class_names(data)
    prompts = ((config.get("evaluate") or {}).get("zero_shot") or {}).get("prompts")
    if prompts:
        texts, indices = retrieval.prompt_classes(prompts, names)
        classes = [names[c] if names and c < len(names) else str(c) for c in indices]
        (target / ZERO_SHOT_FILE).write_text(json.dumps({"classes": classes, "prompts": texts}, indent=2) + "\n",
                                             encoding="utf-8")
    if (data / "manifest.json").is_file():
        train_split = config["data"].get("train_split", "train")
        # No report text in a served artefact (PHI): --show-text reads it from the run directory only.
        write_report_index(target, embed_split(model, data, train_split, build_preprocess(config)), with_text=False)
    else:
        log.warning("no report index in %s: the training shards %s are not readable (pass --data-dir); medtf "
                    "predict will give embeddings and zero-shot probabilities only", target, data)
    return target


class _Embedder:
    """One interface over an exported SavedModel and a run's Keras checkpoint: ``image(batch)``, ``text(strings)``,
    ``scale``, the report index folder, the metadata (conversion record) and the prompts file."""

    def __init__(self, source):
        source = Path(source)
        if (source / "config.yaml").is_file():  # a run directory
            from medtf.evaluation.run import load_run
            from medtf.export.normalization import Preprocessor
            from medtf.export.saved_model import read_run
            from medtf.tasks.classification import conversion_record

            raw = read_run(source)
            _, model, _, _ = load_run(source, "best")
            pre = Preprocessor(raw["data"]["kind"], raw["data"].get("preprocess"))
            self.image = lambda x: np.asarray(model.image_tower(pre.batch(x)))
            self.text = lambda t: np.asarray(model.text_tower(np.asarray(t, dtype=object)))
            self.scale, self.index_dir = logit_scale(model), source / INDEX_DIR
            self.meta = {"spatial_dims": model.spatial_dims, "conversion": conversion_record(raw["data"])}
            prompts = ((raw.get("evaluate") or {}).get("zero_shot") or {}).get("prompts")
            names = (self.meta["conversion"] or {}).get("class_names")
            self.prompts = None
            if prompts:
                texts, indices = retrieval.prompt_classes(prompts, names)
                self.prompts = {"classes": [names[c] if names and c < len(names) else str(c) for c in indices],
                                "prompts": texts}
            return
        import tensorflow as tf

        from medtf.export.layout import METADATA_FILE, resolve_model_dir

        import tensorflow_text  # noqa: F401  (a keras-hub text tower's SavedModel holds its WordPiece ops)
        folder = resolve_model_dir(source)
        signatures = tf.saved_model.load(str(folder)).signatures
        image_sig = signatures["embed_image"] if "embed_image" in signatures else signatures["serving_default"]
        text_sig = signatures["embed_text"] if "embed_text" in signatures else signatures["encode_text"]
        self.image = lambda x: image_sig(images=tf.constant(x, tf.float32))["image_embeddings"].numpy()
        self.text = lambda t: text_sig(reports=tf.constant(list(t)))["text_embeddings"].numpy()
        self.meta = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
        self.scale, self.index_dir = float(self.meta.get("logit_scale", 1.0)), folder
        prompts = folder / ZERO_SHOT_FILE
        self.prompts = json.loads(prompts.read_text(encoding="utf-8")) if prompts.is_file() else None


def read_cases(input_path, meta: dict) -> tuple[list[Path], list[np.ndarray]]:
    """``(paths, images (D, H, W, C))``: mri-reports case folders stacked as the converter does (its sequences,
    reference, grid and normalisation from ``meta["conversion"]``), or image files (`read_for_predict`)."""
    from medtf.io.errors import InputError

    conversion = meta.get("conversion") or {}
    sequences = conversion.get("sequences")
    input_path = Path(input_path)
    if not input_path.is_dir() or not sequences:
        return _files(input_path, meta)
    from tfrecords_builder.mri_reports import _sequence_file

    def is_case(folder: Path) -> bool:
        try:
            return all(_sequence_file(folder, s) for s in sequences)
        except InputError:
            return False

    folders = [input_path] if is_case(input_path) else sorted(p for p in input_path.iterdir() if p.is_dir())
    if not folders:
        return _files(input_path, meta)
    return folders, [case_image(folder, conversion) for folder in folders]


def _files(input_path, meta) -> tuple[list[Path], list[np.ndarray]]:
    """Plain image files (one, or a folder of them) read as `medtf.tasks.classification.read_for_predict` does."""
    from medtf.export.predict import read_input

    input_path = Path(input_path)
    paths = sorted(p for p in input_path.iterdir() if p.is_file()) if input_path.is_dir() else [input_path]
    images = []
    for path in paths:
        array = np.asarray(read_input(path).volume.array, np.float32)
        images.append(array[..., None] if array.ndim == meta["spatial_dims"] else array)
    return paths, images


def case_image(folder: Path, conversion: dict) -> np.ndarray:
    """One mri-reports case folder -> ``(D, H, W, C)`` float32 exactly as `tfrecords_builder.mri_reports` stores
    it (common grid of the reference sequence, linear resampling, foreground z-score, clip)."""
    from medtf.io.errors import InputError
    from medtf.io.images import read_image
    from tfrecords_builder.mri_reports import _sequence_file, common_grid, normalise, resample_to_grid

    h, w, d = conversion["target_size_hwd"]
    volumes = {s: read_image(_sequence_file(folder, s)) for s in conversion["sequences"]}
    grid = common_grid(volumes[conversion.get("reference") or conversion["sequences"][0]], (w, h, d),
                       conversion.get("spacing"))
    channels = []
    for name, volume in volumes.items():
        channel = normalise(resample_to_grid(volume, grid), float(conversion.get("clip", 5.0)))
        if channel is None:
            raise InputError(folder, f"sequence {name!r} has no foreground (empty or constant image)")
        channels.append(channel)
    return np.stack(channels, axis=-1)


def _hits(order, scores, index: dict, show_text: bool) -> list[dict]:
    hits = []
    for i, score in zip(order, scores):
        hit = {"example_id": index["ids"][i], "score": round(float(score), 6)}
        if index["labels"][i] >= 0:
            hit["label"] = int(index["labels"][i])
        if show_text:
            if index["texts"] is None:
                raise ValueError("--show-text: this report index holds no report text (an exported model never "
                                 "does; predict with the run directory after medtf evaluate)")
            hit["text"] = index["texts"].get(index["ids"][i], "")
        hits.append(hit)
    return hits


def predict_contrastive(task: str, model, input_path=None, output=None, top_k: int = 5, query_text=None,
                        show_text: bool = False, verbose: bool = True) -> dict:
    """Embed inputs (or ``query_text``) and retrieve from the stored report index (module docstring)."""
    embedder = _Embedder(model)
    try:
        index = read_report_index(embedder.index_dir)
    except FileNotFoundError:
        if query_text is not None:
            raise ValueError(f"{embedder.index_dir}: no report index to search; run `medtf evaluate` on the run "
                             f"(or export with the training shards readable, --data-dir)") from None
        index = None
    summary = {"task": task, "model": str(model), "top_k": int(top_k)}
    if query_text is not None:
        order, scores = retrieval.top_k(embedder.text([query_text]), index["embeddings"], top_k)
        summary["predictions"] = _hits(order[0], scores[0], index, show_text)
        if verbose:
            for rank, hit in enumerate(summary["predictions"], 1):
                print(f"{rank:3d}  {hit['example_id']}  {hit['score']:.4f}" +
                      (f"  {hit['text']!r}" if show_text else ""))
    else:
        if input_path is None:
            raise ValueError("give --input (case folder(s) or images) or --query-text")
        paths, images = read_cases(input_path, embedder.meta)
        embeddings = np.concatenate([embedder.image(im[None]) for im in images]).astype(np.float32)
        prompts = embedder.prompts
        prompt_embeddings = retrieval.class_prompt_embeddings(embedder.text, prompts["prompts"]) if prompts else None
        rows = []
        for i, (path, embedding) in enumerate(zip(paths, embeddings)):
            row = {"input": str(path), "row": i}
            if index is not None:
                order, scores = retrieval.top_k(embedding, index["embeddings"], top_k)
                row["top_k"] = _hits(order[0], scores[0], index, show_text)
            if prompts:
                p = retrieval.softmax(embedder.scale * prompt_embeddings @ embedding)
                row["zero_shot"] = {c: round(float(v), 6) for c, v in zip(prompts["classes"], p)}
                row["class"] = prompts["classes"][int(p.argmax())]
            rows.append(row)
        summary.update({"embeddings": "embeddings.npy", "predictions": rows})
        if output is None:
            raise ValueError("give --output for predictions on images")
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        if query_text is None:
            np.save(out / "embeddings.npy", embeddings)
        (out / "prediction.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
