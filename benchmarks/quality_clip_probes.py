"""Single-modality baselines and matchers for the image-report retrieval benchmark (issue #16), same held-out cases.

- `text_only_baseline`: bag-of-words (uni- and bigrams, training vocabulary) multinomial logistic regression from
  the report text to its class: how much of the class the reports alone carry.
- `image_only_baseline`: ``medtf train`` of the classification task on the same volumes with the CLIP image tower's
  encoder (3D U-Net contracting path, same depth / filters, instance norm, the tower's average + max pooling,
  softmax head), best epoch on val accuracy: how much of the class the image tower alone can learn from the
  training studies.
- `finding_matcher`: a computed ceiling, not a model: it knows each test study's class and the side, location (or
  kind of diffuse finding), size (mm), ventricle size and white-matter (Fazekas) grade named in its report and
  ranks the reports that agree on more of them first (ties in random order). Studies of one class with the same
  details (e.g. normals with normal ventricles and no white-matter spots) read alike; it cannot tell them apart.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

LOCATIONS = ("frontal lobe", "parietal lobe", "temporal lobe", "occipital lobe", "basal ganglia", "corona radiata")


def split_reports(shards: Path, split: str) -> tuple[list[str], np.ndarray]:
    from medtf.evaluation.cases import iter_examples

    texts, labels = [], []
    for ex in iter_examples(shards, split):
        texts.append(ex["report"].decode("utf-8"))
        labels.append(int(ex["label"]))
    return texts, np.asarray(labels)


def text_only_baseline(shards: Path) -> dict:
    """Test-split class accuracy of a bag-of-words logistic regression fitted on the training reports."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    (train, y_train), (test, y_test) = split_reports(shards, "train"), split_reports(shards, "test")
    words = CountVectorizer(ngram_range=(1, 2)).fit(train)
    model = LogisticRegression(C=1.0, max_iter=3000).fit(words.transform(train), y_train)
    return {"accuracy": float(np.mean(model.predict(words.transform(test)) == y_test)), "n_test": len(y_test),
            "features": len(words.vocabulary_)}


def image_only_baseline(shards: Path, run_dir: Path, depth: int, base_filters: int, epochs: int = 30,
                        pooling: str = "avg_max") -> dict:
    """Test-split class accuracy of the image tower's encoder trained as a 5-class classifier (see the docstring);
    ``pooling`` as the tower's (``avg`` alone: the instance-normalised average hardly varies between studies)."""
    from medtf.cli.demo import experiments_dir
    from medtf.tasks import get_task
    from medtf.training.config import load_config
    from medtf.training.engine import train

    overrides = [f"data.dir={shards}", "data.kind=mri-reports", "data.transforms=[]", "data.batch_size=16",
                 "+model.args.spatial_dims=3", "+model.args.norm=instance", f"+model.args.pooling={pooling}",
                 "model.args.num_classes=5",
                 f"model.args.depth={depth}", f"model.args.base_filters={base_filters}", f"train.epochs={epochs}",
                 "+train.monitor=val_accuracy", "+train.mode=max", "+train.verbose=0"]
    config = load_config(experiments_dir() / "lgg_classifier2d.yaml", overrides)
    start = time.monotonic()
    train(config, run_dir)
    minutes = (time.monotonic() - start) / 60
    metrics = get_task("classification").evaluate(run_dir, split="test", verbose=False)["metrics"]
    # classification metrics are {value, ci_low, ci_high} (bootstrap over test studies)
    return {"metrics": {k: float(v["value"] if isinstance(v, dict) else v) for k, v in metrics.items()
                        if isinstance(v, (int, float)) or (isinstance(v, dict) and "value" in v)},
            "train_minutes": minutes, "overrides": overrides}


def report_finding(text: str) -> tuple[str, str, int, str, int]:
    """``(side, location, size mm, ventricles, fazekas)`` named in a synthetic report (``""`` / 0 when it names
    none); the location of a diffuse finding is its kind (``atrophy`` or ``white matter``); ventricles ``enlarged``
    (atrophy), ``prominent`` or ``normal``; fazekas the white-matter grade (0 when none is named)."""
    low = text.lower()
    side = re.search(r"\b(left|right)\b", low)
    atrophy = re.search(r"atrophy|volume loss", low)
    diffuse = "atrophy" if atrophy else "white matter" if "microangiopathy" in low or "small vessel" in low else ""
    location = next((name for name in LOCATIONS if name in low), diffuse)
    size = re.search(r"(\d+) ?mm", low)
    ventricles = "enlarged" if atrophy else "prominent" if re.search(r"prominen", low) else "normal"
    fazekas = re.search(r"fazekas (?:grade )?(\d)", low)
    return ((side.group(1) if side else ""), location, (int(size.group(1)) if size else 0), ventricles,
            (int(fazekas.group(1)) if fazekas else 0))


def finding_matcher(shards: Path, seed: int = 0) -> dict:
    """Image->report R@1/5/10 of the matcher that knows class, side, location, size, ventricles and white-matter
    grade (see the docstring)."""
    texts, labels = split_reports(shards, "test")
    facts = [report_finding(t) for t in texts]
    rng = np.random.default_rng(seed)
    n = len(texts)
    ranks = []
    for i in range(n):
        # agreement score: class first, then (within the class) side and location, ventricles, white matter and
        # the size to within 3 mm; random tie-breaks
        def agree(j):
            if labels[j] != labels[i]:
                return 0.0
            a, b = facts[i], facts[j]
            return 8.0 + 2 * (a[:2] == b[:2]) + (a[3] == b[3]) + (a[4] == b[4]) + (abs(a[2] - b[2]) <= 3)

        score = np.array([agree(j) for j in range(n)])
        order = np.lexsort((rng.random(n), -score))
        ranks.append(int(np.where(order == i)[0][0]) + 1)
    ranks = np.asarray(ranks)
    return {f"r{k}": float(np.mean(ranks <= k)) for k in (1, 5, 10)}


def zero_shot_on_split(run_dir: Path, shards: Path, split: str, prompt_sets: dict) -> dict:
    """Zero-shot accuracy of a trained clip run on ``split`` for each named set of class prompts (``{name: {class:
    text or [texts]}}``, `medtf.evaluation.retrieval.prompt_classes` form): how prompt wordings are compared on
    the **validation** studies before one is used on test."""
    from medtf.evaluation import retrieval
    from medtf.evaluation.run import build_preprocess, load_run
    from medtf.tasks.contrastive_eval import class_names, embed_split, logit_scale

    config, model, _, _ = load_run(run_dir, "best")
    embedded = embed_split(model, shards, split, build_preprocess(config))
    names, out = class_names(shards), {}
    for name, prompts in prompt_sets.items():
        texts, indices = retrieval.prompt_classes(prompts, names)
        zs = retrieval.zero_shot(embedded["image"], retrieval.class_prompt_embeddings(model.text_tower, texts),
                                 retrieval.relabel(embedded["labels"], indices), logit_scale(model))
        out[name] = {"accuracy": zs["accuracy"], "per_class_recall": zs["per_class_recall"], "n": zs["n"],
                     "prompts_per_class": [1 if isinstance(t, str) else len(t) for t in texts]}
    return out


# One prompt per class: experiments/brain_clip.yaml's prompts until the ensemble there (every side x lobe for the
# focal classes, ventricle x white-matter grade x impression for normal, both kinds of "others") won on the val
# studies of the masked-LM-pretrained, fine-tuned tower (RESULTS.md #16). `main` compares the two.
SINGLE_PROMPTS = {
    "normal": "Findings: No acute infarct, haemorrhage or focal lesion. Impression: Normal MRI brain.",
    "infarct": "Findings: Focus of restricted diffusion on DWI. Impression: Acute infarct.",
    "tumor": "Findings: Intra-axial mass with surrounding oedema. Impression: Mass lesion, tumour.",
    "hemorrhage": "Findings: Focus of susceptibility, low signal on T2*. Impression: Acute haemorrhage.",
    "others": "Findings: White matter FLAIR hyperintensities. Impression: Chronic small vessel disease, atrophy.",
}


def brain_clip_prompts() -> dict:
    """experiments/brain_clip.yaml's zero-shot prompts (the ensemble)."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "experiments" / "brain_clip.yaml"
    return yaml.safe_load(path.read_text())["evaluate"]["zero_shot"]["prompts"]


CONTRAST_WORDS = (("left", "right"), ("frontal", "parietal"), ("temporal", "occipital"), ("infarct", "tumour"))


def frozen_text_probe(runs: dict, shards: Path, folds: int = 5, seed: int = 0, layers: bool = False) -> dict:
    """What a frozen report tower's pooled features (``text_pool``, before the trained projection) carry: 5-fold
    logistic-regression accuracy on the training reports for the class and for each detail an image shows (side,
    location, ventricles, Fazekas grade), per run (``{name: clip run dir}``, e.g. MLM-pretrained vs random frozen
    towers). A tower whose features keep the wording but lose the findings gives the image tower little to align with.
    ``layers``: also every other read-out of the same tower, each backbone layer's output (embeddings, each
    transformer layer) mean- and max-pooled over the report's tokens (``{run: {readout: {target: accuracy}}}``), and
    the cosine of the input token embeddings of words a report uses interchangeably (`CONTRAST_WORDS`): masked-LM
    pretraining pulls words that share every context (left / right) together before any transformer layer. Also
    ``{layer}/at_side_words``: the side probe on the states at the words ``left`` / ``right`` themselves (reports
    that name a side), which a learned attention pooling (``text.pooling: attention``) can pick out and the mean
    dilutes."""
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medtf.evaluation.run import load_run

    texts, labels = split_reports(shards, "train")
    facts = [report_finding(t) for t in texts]
    targets = {"class": labels, "side": [f[0] for f in facts], "location": [f[1] for f in facts],
               "ventricles": [f[3] for f in facts], "fazekas": [f[4] for f in facts]}

    def accuracy(x, y) -> float:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        return float(np.mean(cross_val_score(probe, x, np.asarray(y).astype(str), cv=folds)))

    def scores(x) -> dict:
        out = {key: accuracy(x, y) for key, y in targets.items()}
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        return {**out, "mean_pairwise_cosine": float(np.mean(unit @ unit.T))}

    out = {}
    for name, run in runs.items():
        _, model, _, _ = load_run(Path(run), "best")
        tokens = model.tokenizer(np.asarray(texts, dtype=object))
        inputs = {"token_ids": tokens["token_ids"], "padding_mask": keras.ops.cast(tokens["padding_mask"], "int32")}
        pooled = keras.Model({n: model.get_layer(n).output for n in ("token_ids", "padding_mask")},
                             model.get_layer("text_pool").output)
        result = scores(np.asarray(pooled(inputs, training=False)))
        if layers:
            backbone = model.text_backbone
            names = [layer.name for layer in backbone.layers
                     if layer.name.startswith("transformer_layer") or layer.name == "embeddings_layer_norm"]
            outputs = keras.Model(backbone.input, {n: backbone.get_layer(n).output for n in names})(inputs)
            mask = np.asarray(tokens["padding_mask"], np.float32)[..., None]
            vocabulary = list(model.tokenizer.vocabulary)
            table = np.asarray(backbone.token_embedding.embeddings)
            unit = table / np.linalg.norm(table, axis=1, keepdims=True)
            result = {"text_pool": result, "token_cosine": {
                f"{a}/{b}": float(unit[vocabulary.index(a)] @ unit[vocabulary.index(b)])
                for a, b in CONTRAST_WORDS if a in vocabulary and b in vocabulary}}
            ids = np.asarray(tokens["token_ids"])
            side_ids = [vocabulary.index(w) for w in ("left", "right")]
            sided = [i for i, f in enumerate(facts) if f[0] in ("left", "right") and np.isin(ids[i], side_ids).any()]
            for n in names:
                sequence = np.asarray(outputs[n], np.float32)
                result[f"{n}/mean"] = scores((sequence * mask).sum(1) / mask.sum(1))
                result[f"{n}/max"] = scores(np.where(mask > 0, sequence, -np.inf).max(1))
                # the states at the side words themselves (what an attention pooling can pick out): side only
                at_side = np.stack([sequence[i, np.isin(ids[i], side_ids)].mean(0) for i in sided])
                result[f"{n}/at_side_words"] = {"side": accuracy(at_side, [facts[i][0] for i in sided]),
                                                 "reports": len(sided)}
        out[name] = result
    return out


def main(argv=None) -> None:
    """``python benchmarks/quality_clip_probes.py [--split test] SHARDS RUN [RUN ...]``: val (or test) zero-shot of
    each run with `SINGLE_PROMPTS` vs brain_clip.yaml's ensemble (JSON lines).
    ``... --text-probe SHARDS RUN [RUN ...]``: `frozen_text_probe` of each run's report tower, every read-out."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    split = "val"
    if args[:1] == ["--split"]:  # the test split only once a prompt set has been chosen on val
        split, args = args[1], args[2:]
    if args and args[0] == "--text-probe":
        result = frozen_text_probe({Path(r).name: Path(r) for r in args[2:]}, Path(args[1]), layers=True)
        print(json.dumps(result, indent=1), flush=True)
        return
    prompt_sets = {"single": SINGLE_PROMPTS, "ensemble": brain_clip_prompts()}
    for run in args[1:]:
        result = zero_shot_on_split(Path(run), Path(args[0]), split, prompt_sets)
        print(json.dumps({"run": run, "split": split, **result}), flush=True)


if __name__ == "__main__":
    main()
