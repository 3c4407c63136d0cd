"""Feature specs of the TFRecord shards: one `Schema` per data kind, used by both the writer and the reader.

Every tensor ``k`` is stored as three features, so a record is self-describing and decodable without the schema:

- ``k``: the raw C-order little-endian bytes,
- ``k/shape``: int64 list (its length is the field's rank),
- ``k/dtype``: the NumPy dtype name (checked against the schema on decode).

Scalars and short vectors (spacing, labels, ids) are plain int64/float/bytes features. The reader side
(`medtf.data.decoder`) builds `tf.io.parse_single_example` specs from the same `Schema` objects, so a field
added here is written and read with one change.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from medtf.data import example_proto as ep


@dataclasses.dataclass(frozen=True)
class TensorField:
    """An n-d array stored as raw bytes + shape + dtype."""

    name: str
    dtype: str
    rank: int
    description: str = ""


@dataclasses.dataclass(frozen=True)
class ValueField:
    """A scalar or vector feature. ``length=None`` means variable length.

    ``optional`` (variable length only) fields may be left out of an example: they are written, and decoded from
    shards older than the field, as empty (meaning "not known").
    """

    name: str
    kind: str  # "int64" | "float" | "bytes"
    length: int | None = 1
    description: str = ""
    optional: bool = False

    def __post_init__(self):
        if self.optional and self.length is not None:
            raise ValueError(f"field {self.name!r}: only variable-length fields can be optional")


@dataclasses.dataclass(frozen=True)
class Schema:
    """The feature spec of one data kind.

    ``oldest_readable`` is the oldest schema version whose shards this spec still decodes: fields added since
    are optional variable-length value fields, which decode as empty from older shards.
    """

    kind: str
    version: int
    fields: tuple[TensorField | ValueField, ...]
    description: str = ""
    oldest_readable: int | None = None

    def reads(self, version) -> bool:
        """True when shards written with schema ``version`` decode with this spec."""
        return version in range(self.oldest_readable or self.version, self.version + 1)

    @property
    def tensor_fields(self) -> tuple[TensorField, ...]:
        return tuple(f for f in self.fields if isinstance(f, TensorField))

    @property
    def value_fields(self) -> tuple[ValueField, ...]:
        return tuple(f for f in self.fields if isinstance(f, ValueField))

    def field(self, name: str):
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"schema {self.kind!r} has no field {name!r}")

    def describe(self) -> dict[str, Any]:
        """JSON-able description written into manifest.json."""
        out = {}
        for f in self.fields:
            if isinstance(f, TensorField):
                out[f.name] = {"type": "tensor", "dtype": f.dtype, "rank": f.rank, "description": f.description}
            else:
                out[f.name] = {"type": f.kind, "length": f.length, "description": f.description}
        return out

    def encode(self, example: Mapping[str, Any]) -> bytes:
        """Serialise one example (a dict of NumPy arrays / Python values) after checking it against the schema."""
        return self.encode_chunk(example).tobytes()

    def encode_chunk(self, example: Mapping[str, Any]) -> ep.Chunk:
        """Like `encode`, as buffers that still share the tensors' memory (written to disk without copies)."""
        missing = [f.name for f in self.fields
                   if f.name not in example and not (isinstance(f, ValueField) and f.optional)]
        extra = sorted(set(example) - {f.name for f in self.fields})
        if missing or extra:
            raise ValueError(f"{self.kind} example does not match its schema: missing {missing}, unexpected {extra}")
        features: dict[str, ep.Chunk] = {}
        for f in self.tensor_fields:
            array = np.asarray(example[f.name])
            if array.dtype != np.dtype(f.dtype):
                raise ValueError(f"{self.kind}.{f.name}: dtype {array.dtype} but the schema says {f.dtype}")
            if array.ndim != f.rank:
                raise ValueError(f"{self.kind}.{f.name}: rank {array.ndim} but the schema says {f.rank}")
            little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            features[f.name] = ep.bytes_feature(little.reshape(-1))
            features[f.name + "/shape"] = ep.int64_feature(array.shape)
            features[f.name + "/dtype"] = ep.bytes_feature(f.dtype.encode())
        for f in self.value_fields:
            value = example.get(f.name, ())  # only optional fields can be absent (checked above)
            if f.kind == "bytes":
                values = [value] if isinstance(value, (bytes, str)) else list(value)
                values = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
            else:
                values = np.atleast_1d(np.asarray(value)).ravel()
            if f.length is not None and len(values) != f.length:
                raise ValueError(f"{self.kind}.{f.name}: {len(values)} values but the schema says {f.length}")
            encoder = {"bytes": ep.bytes_feature, "int64": ep.int64_feature, "float": ep.float_feature}[f.kind]
            features[f.name] = encoder(values)
        return ep.serialize_example_chunk(features)


_GEOMETRY = (
    ValueField("spacing", "float", 3, "voxel size (x, y, z) in mm of the stored grid"),
    ValueField("origin", "float", 3, "patient-space (LPS) position in mm of voxel (0, 0, 0)"),
    ValueField("direction", "float", 9, "row-major direction cosines; columns are the x, y, z index axes"),
)
_IDS = (
    ValueField("patient_id", "bytes", 1, "keyed hash of the patient ID (never the raw ID)"),
    ValueField("example_id", "bytes", 1, "unique, de-identified id of this example"),
)

BRACHY_CT = Schema(
    kind="brachy-ct",
    version=2,
    oldest_readable=1,  # v2 added channel_numbers (empty when decoded from v1 shards: numbers 1..n)
    description="CT volume with brachytherapy catheters rasterised from a DICOM RT Plan; one example per plan.",
    fields=_IDS
    + (
        TensorField("image", "int16", 3, "CT in Hounsfield units, (D, H, W) = (z, y, x)"),
        TensorField("mask", "uint8", 3, "1 inside any catheter tube, (D, H, W)"),
        TensorField("instances", "uint8", 3, "catheter k has label k (1-based, plan channel order; its plan "
                                             "ChannelNumber is channel_numbers[k-1]), 0 elsewhere; uint8: plans "
                                             "with more than 255 catheters are rejected"),
        TensorField("catheter_points", "float32", 2, "all catheter polyline vertices (P, 3), mm LPS"),
        ValueField("catheter_offsets", "int64", None, "row splits into catheter_points: catheter k is rows [o[k], o[k+1])"),
        ValueField("channel_numbers", "int64", None, "the plan's ChannelNumber of each catheter, in catheter order "
                                                     "(empty when unknown, e.g. shards written before schema v2)",
                   optional=True),
        ValueField("window", "float", 2, "display window centre and width from the CT"),
    )
    + _GEOMETRY,
)

LGG_MRI = Schema(
    kind="lgg-mri",
    version=1,
    description="One brain MRI slice (pre-contrast, FLAIR, post-contrast as RGB) with its FLAIR tumour mask.",
    fields=_IDS
    + (
        TensorField("image", "uint8", 3, "(H, W, 3): pre-contrast, FLAIR, post-contrast"),
        TensorField("mask", "uint8", 3, "(H, W, 1) tumour mask in {0, 1}"),
        ValueField("slice_index", "int64", 1, "1-based slice number within the patient's stack"),
        ValueField("num_slices", "int64", 1, "number of slices in the patient's stack"),
        ValueField("label", "int64", 1, "1 when the slice shows tumour, else 0"),
    ),
)

PROSTATE_MPMRI = Schema(
    kind="prostate-mpmri",
    version=1,
    description="PROSTATEx-style finding: T2, high-b DWI and ADC patches on one grid centred on the lesion.",
    fields=_IDS
    + (
        TensorField("image", "float32", 3,
                    "(H, W, C) patch: T2, DWI (highest b), ADC (--channels dwi: DWI alone); z-scored per patient"),
        ValueField("label", "int64", 1, "ClinSig: 1 significant, 0 not, -1 unknown (challenge test set)"),
        ValueField("finding_id", "int64", 1, "fid of the finding within its patient"),
        ValueField("zone", "bytes", 1, "prostate zone of the finding (PZ, TZ, AS, SV) or empty"),
        ValueField("lesion_position", "float", 3, "lesion centre in mm, patient LPS"),
        ValueField("pixel_spacing", "float", 2, "patch pixel size (x, y) in mm"),
    ),
)

NUCLEI_HE = Schema(
    kind="nuclei-he",
    version=1,
    description="H&E tile with every nucleus as box + class + instance id (PanNuke / CoNSeP).",
    fields=_IDS
    + (
        TensorField("image", "uint8", 3, "(H, W, 3) RGB tile"),
        TensorField("instances", "uint16", 2, "(H, W) instance map of the tile, 0 = background"),
        TensorField("boxes", "float32", 2, "(N, 4) [ymin, xmin, ymax, xmax] in tile pixels, max exclusive"),
        TensorField("classes", "int32", 1, "(N,) nucleus class id (names in the manifest)"),
        TensorField("instance_ids", "int32", 1, "(N,) id of each box's nucleus in `instances`"),
        ValueField("tissue", "bytes", 1, "tissue type (PanNuke) or empty"),
        ValueField("tile_origin", "int64", 2, "(y, x) of the tile's first pixel in the source image"),
        ValueField("scale", "float", 1, "tile pixels per source pixel"),
    ),
)

MRI_REPORTS = Schema(
    kind="mri-reports",
    version=2,
    oldest_readable=1,  # v2 added nonfinite_filled (empty when decoded from v1 shards)
    description="Brain MRI (several sequences on one grid) paired with its radiology report text and class.",
    fields=_IDS
    + (
        TensorField("image", "float32", 4, "(D, H, W, C) sequences stacked as channels, normalised per sequence"),
        ValueField("report", "bytes", 1, "the report text, UTF-8, exactly as in the source"),
        ValueField("label", "int64", 1, "class index into the manifest's class names"),
        ValueField("class_name", "bytes", 1, "class name (infarct, tumor, hemorrhage, normal, others)"),
        ValueField("sequences", "bytes", None, "sequence names in channel order"),
        ValueField("nonfinite_filled", "int64", None, "per sequence, NaN/Inf voxels of the source image filled by "
                                                      "--nonfinite fill:VALUE (0 without it: such images fail; "
                                                      "empty in shards written before schema v2)", optional=True),
    )
    + _GEOMETRY,
)

IMAGE_FOLDERS = Schema(
    kind="image-folders",
    version=1,
    description="One 2D image of a folder-per-class tree (e.g. Kaggle brain tumour yes/no) with its class.",
    fields=_IDS
    + (
        TensorField("image", "uint8", 3, "(H, W, C): C = 3 (RGB) or 1 (--grayscale); after crop and resize"),
        ValueField("label", "int64", 1, "class index into the manifest's options.class_names"),
        ValueField("class_name", "bytes", 1, "the class folder's name"),
        ValueField("source_shape", "int64", 2, "(H, W) of the source image"),
        ValueField("crop_box", "int64", 4, "(top, left, bottom, right) kept of the source, bottom/right exclusive"),
    ),
)

LUNG_NODULES = Schema(
    kind="lung-nodules",
    version=1,
    description="LUNGx-style lung nodule: an axial CT patch on a physical grid centred on the nodule.",
    fields=_IDS
    + (
        TensorField("image", "float32", 3, "(H, W, C) patch, one channel per --window (in [0, 1]) or HU"),
        ValueField("label", "int64", 1, "1 malignant or primary lung cancer, 0 benign"),
        ValueField("diagnosis", "bytes", 1, "the CSV's diagnosis: benign, malignant or primary lung cancer"),
        ValueField("nodule_number", "int64", 1, "nodule number within its scan"),
        ValueField("lesion_position", "float", 3, "nodule centre in mm, patient LPS"),
        ValueField("pixel_spacing", "float", 2, "patch pixel size (x, y) in mm"),
    ),
)

SCHEMAS: dict[str, Schema] = {s.kind: s for s in (BRACHY_CT, LGG_MRI, PROSTATE_MPMRI, NUCLEI_HE, MRI_REPORTS,
                                                 IMAGE_FOLDERS, LUNG_NODULES)}


def get_schema(kind: str) -> Schema:
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise KeyError(f"unknown data kind {kind!r}; known: {sorted(SCHEMAS)}") from None
