"""``medtf verify``: re-read every record of a shard folder and check it against its manifest.

Checks, each reported as a readable problem line (an empty list means the data set is sound):
shard present, sha256 and byte size as recorded; every record readable (no truncation / CRC error); every tensor
decodes to its declared shape and dtype; per-shard and per-split example counts; every example's patient belongs
to its split's patient list; no patient in two splits; no stray shard files beside the manifest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from medtf.data.manifest import read_manifest
from medtf.data.schema import TensorField, get_schema
from medtf.data.shards import SHARD_RE, sha256_file


@dataclasses.dataclass
class VerifyReport:
    folder: str
    problems: list[str]
    num_examples: int
    num_shards: int

    @property
    def ok(self) -> bool:
        return not self.problems


def _decode_summary(schema):
    """A map fn that forces every tensor to decode (sizes are returned so nothing is pruned) but ships only ids."""
    import tensorflow as tf

    from medtf.data.decoder import decode_example

    def summary(serialized):
        example = decode_example(serialized, schema)
        sizes = [tf.size(example[f.name]) for f in schema.fields if isinstance(f, TensorField)]
        return example["patient_id"], tf.add_n(sizes) if sizes else tf.constant(0)

    return summary


def _check_shard(path: Path, info: dict, compression, schema, allowed_patients: set) -> tuple[list[str], int]:
    import tensorflow as tf

    problems = []
    if not path.is_file():
        return [f"{path.name}: missing shard file"], 0
    if path.stat().st_size != info.get("bytes", path.stat().st_size):
        problems.append(f"{path.name}: size {path.stat().st_size} bytes, manifest says {info['bytes']}")
    digest = sha256_file(path)
    if digest != info["sha256"]:
        problems.append(f"{path.name}: sha256 {digest[:12]}... differs from manifest {info['sha256'][:12]}...")
    count, foreign = 0, set()
    dataset = tf.data.TFRecordDataset(str(path), compression_type=compression or "").map(_decode_summary(schema))
    try:
        for patient, _ in dataset.as_numpy_iterator():
            count += 1
            if patient.decode() not in allowed_patients:
                foreign.add(patient.decode())
    except tf.errors.DataLossError as exc:
        problems.append(f"{path.name}: unreadable after record {count} (truncated or corrupted): "
                        f"{str(exc).splitlines()[0]}")
    except tf.errors.InvalidArgumentError as exc:
        problems.append(f"{path.name}: record {count} does not decode to its declared shape/dtype: "
                        f"{str(exc).splitlines()[0]}")
    if count != info["num_examples"]:
        problems.append(f"{path.name}: {count} readable records, manifest says {info['num_examples']}")
    if foreign:
        problems.append(f"{path.name}: {len(foreign)} patient(s) not listed for this split (split leak)")
    return problems, count


def verify_dataset(folder) -> VerifyReport:
    from medtf.progress import progress

    folder = Path(folder)
    manifest = read_manifest(folder)
    schema = get_schema(manifest["kind"])
    problems: list[str] = []
    if not schema.reads(manifest.get("schema_version")):
        readable = f"{schema.oldest_readable or schema.version}..{schema.version}"
        problems.append(f"schema version {manifest.get('schema_version')} but this medtf reads {readable}")
    owner: dict[str, str] = {}
    for split, info in manifest["splits"].items():
        for patient in info["patients"]:
            if owner.setdefault(patient, split) != split:
                problems.append(f"patient {patient} is in both {owner[patient]!r} and {split!r}")
    total, listed = 0, set()
    bar = progress(total=sum(len(info["shards"]) for info in manifest["splits"].values()), desc="verify",
                   unit="shard")
    for split, info in manifest["splits"].items():
        split_count = 0
        for shard in info["shards"]:
            listed.add(shard["file"])
            shard_problems, count = _check_shard(
                folder / shard["file"], shard, manifest.get("compression"), schema, set(info["patients"])
            )
            problems.extend(shard_problems)
            split_count += count
            bar.update()
        if split_count != info["num_examples"]:
            problems.append(f"split {split!r}: {split_count} records, manifest says {info['num_examples']}")
        total += split_count
    bar.close()
    stray = sorted(p.name for p in folder.iterdir() if SHARD_RE.match(p.name) and p.name not in listed)
    if stray:
        problems.append(f"shard files not in the manifest: {', '.join(stray)}")
    return VerifyReport(str(folder), problems, total, len(listed))
