"""The conversion engine shared by every source layout.

A converter module only says how to *find* cases in its layout and how to turn *one* case into examples
(`Converter.discover`, `Converter.convert_case`). The engine does the rest, identically for every kind:

1. **Cases, in parallel and resumably.** Each case runs in a worker process (``--workers N``) and is written to
   ``<output>/.work/<case>.rec`` (length-prefixed serialized examples) plus a ``.json`` status, both atomically.
   A re-run after an interruption skips cases whose status exists for the same options.
   A bad case (the converter raised `medtf.io.errors.InputError`) becomes a failure record (file + reason,
   de-identified) and the rest goes on (``--strict``: fatal). Any other exception is a bug in the converter: the
   conversion stops with its (de-identified) traceback and `ConverterBug` (exit code 3); the cases finished
   before it stay in ``.work`` and a re-run after the fix resumes.
2. **Patient-level splits** (stratified when the converter gives a stratum), assigned after all cases are known.
3. **Shards + manifest** through `medtf.data.writer.DatasetWriter`; ``.work`` is removed after success.

On a cluster, ``--num-tasks N --task-index I`` runs step 1 for one share of the patients and ``--merge`` runs steps
2 and 3 over the work of all tasks, with the same result (see `tfrecords_builder.tasks`).

Patient identifiers never leave a worker un-hashed: examples, file names, failures and log lines carry only the
keyed pseudonym (`medtf.data.deid.IdHasher`).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import shutil
import traceback
from pathlib import Path
from typing import Any

from medtf.data import deid, splits
from medtf.data.manifest import ManifestError, read_manifest, write_json_atomic
from medtf.data.schema import Schema
from medtf.data.writer import DatasetWriter, iter_record_file, write_record_file
from medtf.io.errors import InputError
from tfrecords_builder import tasks

log = logging.getLogger("medtf.convert")
WORK_DIR = ".work"


@dataclasses.dataclass(frozen=True)
class Case:
    """One unit of conversion work (a patient folder, a study, a plan).

    ``key`` (its path relative to the input) orders cases; it and ``patient_id`` may hold PHI and are never
    written anywhere. ``raw_ids`` are further identifiers to scrub from messages (folder names, accession ...).
    """

    key: str
    patient_id: str
    paths: tuple[Path, ...]
    raw_ids: tuple[str, ...] = ()
    info: tuple = ()
    stratum: float | str | None = None  # used when the converter stratifies at discovery
    split: str | None = None  # the case's split, set before conversion when `Converter.uses_split` says so


@dataclasses.dataclass
class CaseOutput:
    """What one case converted to.

    ``failures`` lists parts of the case that were skipped while the rest of it converted (a finding outside
    its image, one unreadable tile) as ``(path or None, reason)``; they are recorded like failed cases.
    """

    examples: list[dict[str, Any]]
    stratum: float | str | None = None
    failures: list[tuple[Any, str]] = dataclasses.field(default_factory=list)


class Converter:
    """Base class of the per-layout converters in `tfrecords_builder`."""

    kind: str = ""
    schema: Schema
    stratify_by: str | None = None  # human description of the stratum, recorded in the manifest
    # True when every Case's stratum is known at discovery (or there is none): splits are then assigned before
    # conversion and shards are written while the workers convert, instead of after all of them.
    stratify_at_discovery: bool = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Kind-specific options."""

    def case_options(self, options: argparse.Namespace) -> dict:
        """The options that change what a case converts to (recorded in the manifest, keyed for resume)."""
        return {}

    def uses_split(self, options: argparse.Namespace) -> bool:
        """True when a case converts differently by split (``Case.split`` is then set before `convert_case`, and
        a finished case is reused on resume only for the same split). Needs ``stratify_at_discovery``."""
        return False

    def discover(self, input_dir: Path, options) -> tuple[list[Case], list[tuple[str, str]]]:
        """Cases found under ``input_dir`` and rejected entries as ``(relative path, reason)``.

        The path of a rejected entry is written only as a pseudonym, so its reason must not repeat it.
        """
        raise NotImplementedError

    def convert_case(self, case: Case, options) -> CaseOutput:
        raise NotImplementedError


class ConversionError(Exception):
    pass


class ConverterBug(Exception):
    """A converter raised something other than `InputError`: a bug in medtf, not a problem of the input.

    ``traceback`` is the worker's traceback, de-identified (raw patient IDs replaced by their pseudonyms).
    """

    def __init__(self, case: str, traceback: str):
        self.case, self.traceback = case, traceback
        super().__init__(f"converter bug in case {case}:\n{traceback}")


# `medtf convert` exit codes (README "Bad input loses nothing").
EXIT_OK, EXIT_INPUTS_FAILED, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=Path, help="source folder in the layout described above")
    parser.add_argument("--output", required=True, type=Path, help="destination folder for shards + manifest.json")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test patient fractions (default %(default)s)")
    parser.add_argument("--folds", type=int, default=None,
                        help="K-fold mode: keep --split's test fraction, deal the rest into fold-0..fold-{K-1}")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default %(default)s)")
    parser.add_argument("--shard-size-mb", type=float, default=256.0, help="target shard size (default %(default)s)")
    parser.add_argument("--compression", choices=["GZIP"], default=None, help="compress shards (.tfrecord.gz)")
    parser.add_argument("--id-salt", default=None,
                        help="secret key for hashing patient IDs (default: a generated key in <output>.idkey)")
    parser.add_argument("--id-key-file", type=Path, default=None, help="file holding the ID hashing key")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default %(default)s)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad case instead of recording it")
    parser.add_argument("--allow-failures", action="store_true",
                        help="exit 0 when some inputs failed (they are recorded in manifest.json and the shards hold "
                             "the other cases either way); without it such a conversion exits 1")
    parser.add_argument("--force", action="store_true", help="reconvert even if the output is up to date")
    parser.add_argument("--log-raw-paths", action="store_true",
                        help="print raw input paths of failures on the console (may show patient IDs; never "
                             "written to the manifest)")
    tasks.add_task_arguments(parser)


def _fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _input_fingerprint(cases: list[Case], key: bytes) -> str:
    h = hashlib.sha256(key)
    for case in cases:
        h.update(case.key.encode())
        for p in case.paths:
            st = Path(p).stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def _run_case(converter: Converter, case: Case, options, key: bytes, work_dir: Path, fingerprint: str) -> dict:
    """Convert one case in a worker; never raises for bad input (returns a failure status instead)."""
    hasher = deid.IdHasher(key)
    patient = hasher(case.patient_id)
    case_hash = deid.IdHasher(key, prefix="c")(case.key)
    raw_ids = (case.patient_id,) + tuple(case.raw_ids)
    status = {"case": case_hash, "patient": patient, "options": _case_fingerprint(fingerprint, case)}
    try:
        output = converter.convert_case(case, options)
        records = (converter.schema.encode_chunk(dict(example, patient_id=patient, example_id=f"{case_hash}-{i:04d}"))
                   for i, example in enumerate(output.examples))
        lengths = write_record_file(work_dir / f"{case_hash}.rec", records)
        partial = [{"case": case_hash, "file": hasher.scrub(_relative(path, case), raw_ids, patient),
                    "reason": hasher.scrub(reason, raw_ids, patient)} for path, reason in output.failures]
        status.update(ok=True, num_examples=len(lengths), stratum=output.stratum, partial_failures=partial)
    except InputError as exc:
        status.update(ok=False, file=hasher.scrub(_relative(exc.path, case), raw_ids, patient),
                      reason=hasher.scrub(exc.reason, raw_ids, patient), raw_file=exc.path)
    except Exception as exc:  # not an input error: a bug in the converter, reported as such (see the docstring)
        status.update(ok=False, bug=True, file=hasher.scrub(_relative(None, case), raw_ids, patient),
                      reason=hasher.scrub(f"converter bug: {type(exc).__name__}: {exc}", raw_ids, patient),
                      traceback=hasher.scrub(traceback.format_exc(), raw_ids, patient), raw_file=case.key)
    public = {k: v for k, v in status.items() if k != "raw_file"}
    write_json_atomic(work_dir / f"{case_hash}.json", public)
    return status


def _relative(path, case: Case) -> str:
    if path is None:
        return case.key
    path = Path(path)
    for root in case.paths:
        root = Path(root)
        base = root if root.is_dir() else root.parent
        try:
            return str(Path(case.key) / path.relative_to(base))
        except ValueError:
            continue
    return str(Path(case.key) / path.name)


def _worker_init():
    logging.basicConfig(level=logging.WARNING)


def run_conversion(converter: Converter, options: argparse.Namespace) -> dict:
    """Convert ``options.input`` into ``options.output``; returns the manifest (a task: its status)."""
    input_dir, output_dir = Path(options.input), Path(options.output)
    task = tasks.task_from_options(options)
    if not input_dir.is_dir():
        raise ConversionError(f"{input_dir}: is a file, not a folder (--input takes the folder of the source layout)"
                              if input_dir.exists() else f"{input_dir}: input folder does not exist")
    fractions = splits.parse_fractions(options.split)
    key = deid.load_or_create_key(output_dir, options.id_salt, options.id_key_file)
    hasher = deid.IdHasher(key)
    case_options = {"kind": converter.kind, "schema_version": converter.schema.version,
                    **converter.case_options(options)}
    case_fp = _fingerprint([case_options, deid.key_fingerprint(key)])

    cases, discovery_failures = converter.discover(input_dir, options)
    cases = sorted(cases, key=lambda c: c.key)
    # Discovery failures are not tied to a patient yet: their folders become pseudonyms (raw on request only);
    # reasons must not repeat the path (see `Converter.discover`) and are scrubbed of every known raw id.
    known_ids = [c.patient_id for c in cases] + [i for c in cases for i in c.raw_ids]
    failures = [{"case": None, "file": _public_path(input_dir, f, deid.IdHasher(key, prefix="f")),
                 "reason": hasher.scrub(r, known_ids)} for f, r in discovery_failures]
    for (raw, _), failure in zip(discovery_failures, failures):
        log.warning("skipped %s: %s", raw if options.log_raw_paths else failure["file"], failure["reason"])
    if options.strict and failures:
        raise ConversionError(f"--strict: {failures[0]['file']}: {failures[0]['reason']}")
    if not cases:
        raise ConversionError(f"{input_dir}: no {converter.kind} cases found" +
                              (f" ({len(failures)} inputs rejected)" if failures else ""))

    split_options = {"fractions": fractions, "folds": options.folds, "seed": options.seed}
    input_fp = _input_fingerprint(cases, key)
    run_fp = _fingerprint([case_fp, split_options, options.shard_size_mb, options.compression, input_fp])
    # What a task and the merge must agree on (named in the merge's message when they do not).
    settings = {"case_options": case_options, "split": split_options, "shard_size_mb": options.shard_size_mb,
                "compression": options.compression, "id_key": deid.key_fingerprint(key), "input": input_fp}
    if not options.force:
        try:
            existing = read_manifest(output_dir)
            if existing.get("run_fingerprint") == run_fp:
                log.info("%s is up to date (same inputs and options); nothing to do", output_dir)
                return existing
        except ManifestError:
            pass

    if converter.uses_split(options):
        # The split changes what a case converts to (brachy-ct crops training cases only): assigned now, as the
        # streaming path below and every task (all see every case) assign it.
        if not converter.stratify_at_discovery:
            raise ConversionError(f"{converter.kind}: a split-dependent conversion needs splits at discovery")
        _, assignment = _assign([(hasher(c.patient_id), c.stratum) for c in cases], fractions, options)
        cases = [dataclasses.replace(c, split=assignment[hasher(c.patient_id)]) for c in cases]

    work_dir = output_dir / WORK_DIR
    work_dir.mkdir(parents=True, exist_ok=True)
    if task is not None:
        # A split that all patients cannot fill fails every task now, not the merge after all the work.
        _assign([(hasher(c.patient_id), None) for c in cases], fractions, options)
        return _run_task(converter, cases, options, key, work_dir, case_fp, settings, task)
    writer = DatasetWriter(output_dir, converter.schema, options.shard_size_mb, options.compression)
    feeder = None
    if converter.stratify_at_discovery:
        # Splits are known before any case converts, so shards are written while workers still convert.
        strata, assignment = _assign([(hasher(c.patient_id), c.stratum) for c in cases], fractions, options)
        case_ids = deid.IdHasher(key, prefix="c")
        order = sorted((hasher(c.patient_id), case_ids(c.key), c.key) for c in cases)
        feeder = _OrderedFeeder(writer, work_dir, assignment, [case for _, case, _ in order])
        # Convert in the order shards are written, so finished cases stream out instead of piling up.
        rank = {key: i for i, (_, _, key) in enumerate(order)}
        cases = sorted(cases, key=lambda c: rank[c.key])
    try:
        if getattr(options, "merge", False):
            statuses = _merged_statuses(cases, options, key, work_dir, case_fp, settings)
            for status in statuses:
                if feeder:
                    feeder.case_done(status)
        else:
            statuses = _convert_cases(converter, cases, options, key, work_dir, case_fp,
                                      on_done=feeder.case_done if feeder else None)
        _raise_bugs(statuses)
        for status in statuses:
            failures.extend(_status_failures(status, options))
        if options.strict and failures:
            raise ConversionError(f"--strict: {failures[0]['file']}: {failures[0]['reason']}")
        ok = [s for s in statuses if s["ok"] and s["num_examples"] > 0]
        if not ok:
            raise ConversionError(f"no case converted successfully ({len(failures)} failures); see the messages above")
        if feeder is None:
            strata, assignment = _assign([(s["patient"], s["stratum"]) for s in ok], fractions, options)
            feeder = _OrderedFeeder(writer, work_dir, assignment, [s["case"] for s in sorted(
                ok, key=lambda s: (s["patient"], s["case"]))])
            for s in ok:
                feeder.case_done(s)
        feeder.check_complete()
        manifest = writer.finalize(
            {
                "created_by": f"medtf convert {converter.kind}",
                "options": {**converter.case_options(options), "shard_size_mb": options.shard_size_mb},
                "split": {"fractions": fractions, "folds": options.folds, "seed": options.seed,
                          "stratified_by": converter.stratify_by, "strata": dict(sorted(strata.items()))},
                "num_cases": len(cases) + len(discovery_failures),
                "num_failed": len(failures),
                "failures": failures,
                "run_fingerprint": run_fp,
                "id_hash": {"algorithm": "hmac-sha256", "key_fingerprint": deid.key_fingerprint(key)},
            },
            split_order=sorted(set(assignment.values()), key=_split_sort_key),
        )
    except BaseException:
        writer.abort()  # temporary shards go; finished cases stay in .work for the next run to resume
        raise
    shutil.rmtree(work_dir, ignore_errors=True)
    return manifest


def _run_task(converter, cases, options, key, work_dir, case_fp, settings, task) -> dict:
    """Convert one task's share of ``cases`` into ``work_dir`` (resuming); returns the task's status."""
    index, count = task
    case_ids, hasher = deid.IdHasher(key, prefix="c"), deid.IdHasher(key)
    of_task = tasks.assign_tasks({case_ids(c.key): hasher(c.patient_id) for c in cases}, count)
    mine = [c for c in cases if of_task[case_ids(c.key)] == index]
    ids = [case_ids(c.key) for c in mine]
    log.info("task %d of %d: %d of %d cases", index, count, len(mine), len(cases))
    tasks.write_task_status(work_dir, index, count, settings, ids, finished=False)
    statuses = _convert_cases(converter, mine, options, key, work_dir, case_fp)
    _raise_bugs(statuses)
    failures = [f for status in statuses for f in _status_failures(status, options)]
    if options.strict and failures:
        raise ConversionError(f"--strict: {failures[0]['file']}: {failures[0]['reason']}")
    return tasks.write_task_status(work_dir, index, count, settings, ids, finished=True, num_cases=len(mine),
                                   num_examples=sum(s["num_examples"] for s in statuses if s["ok"]),
                                   num_failed=len(failures))


def _merged_statuses(cases, options, key, work_dir, case_fp, settings) -> list[dict]:
    """Every case's status as the tasks left it in ``work_dir`` (failures included), in ``cases`` order.

    Raises `tasks.TaskError` naming the cases (and their tasks) that have no finished conversion with these
    options, or the tasks that ran with other input or options.
    """
    problems = tasks.settings_problems(work_dir, settings, options.num_tasks)
    case_ids, hasher = deid.IdHasher(key, prefix="c"), deid.IdHasher(key)
    statuses, missing, other = [], [], []
    for case in cases:
        case_id = case_ids(case.key)
        try:
            status = json.loads((work_dir / f"{case_id}.json").read_text())
        except (OSError, json.JSONDecodeError):
            missing.append(case_id)
            continue
        if status.get("options") != _case_fingerprint(case_fp, case):
            other.append(case_id)
            missing.append(case_id)
        elif status["ok"] and not _work_file_intact(work_dir, status):
            missing.append(case_id)
        else:
            statuses.append({**status, "raw_file": case.key})
    if missing:
        raise tasks.TaskError(tasks.missing_message(
            missing, len(cases), work_dir, {case_ids(c.key): hasher(c.patient_id) for c in cases},
            options.num_tasks, other, problems))
    if problems:
        raise tasks.TaskError("cannot merge: " + tasks.settings_message(problems))
    return statuses


def _public_path(input_dir: Path, path: str, pseudonym) -> str:
    """A rejected input's path with every folder component pseudonymised (folders are often named by ID)."""
    parts, public = Path(path).parts, []
    for i, part in enumerate(parts):
        public.append(pseudonym(part) if (input_dir.joinpath(*parts[: i + 1])).is_dir() else part)
    return str(Path(*public)) if public else str(path)


def _assign(patient_strata: list[tuple[str, Any]], fractions, options) -> tuple[dict, dict]:
    """Per-patient strata and split assignment from ``(patient, stratum)`` pairs (several per patient allowed)."""
    per_patient: dict[str, list] = {}
    for patient, stratum in patient_strata:
        per_patient.setdefault(patient, []).append(stratum)
    strata = splits.strata_from_values({p: _combine_strata(v) for p, v in per_patient.items()})
    try:
        if options.folds:
            return strata, splits.assign_folds(strata, options.folds, fractions.get("test", 0.0), options.seed)
        return strata, splits.assign_splits(strata, fractions, options.seed)
    except splits.EmptySplitError as exc:
        asked = f"--folds {options.folds}" if options.folds else f"--split {options.split}"
        n = f"{exc.num_patients} patient{'s' if exc.num_patients != 1 else ''}"
        raise ConversionError(
            f"{asked} leaves {_and(exc.empty)} empty: the data set has {n} (a split needs at least one); "
            f"convert more patients, or ask only for splits that can be filled: --split 1,0,0 for train only, "
            f"other --split fractions, or fewer --folds") from None


def _and(names: list[str]) -> str:
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


class _OrderedFeeder:
    """Adds finished cases' records to the writer in one fixed order, whatever order workers finish in.

    The order (patient pseudonym, then case pseudonym) makes shards byte-identical for any number of workers.
    """

    def __init__(self, writer, work_dir, assignment, case_order):
        self.writer, self.work_dir, self.assignment = writer, work_dir, assignment
        self.order = list(case_order)
        self.done: dict[str, dict] = {}
        self.next = 0

    def case_done(self, status: dict) -> None:
        self.done[status["case"]] = status
        while self.next < len(self.order) and self.order[self.next] in self.done:
            s = self.done.pop(self.order[self.next])
            self.next += 1
            if s["ok"] and s["num_examples"] > 0:
                for ref in iter_record_file(self.work_dir / f"{s['case']}.rec"):
                    self.writer.add(self.assignment[s["patient"]], s["patient"], ref)

    def check_complete(self) -> None:
        if self.next != len(self.order):
            raise ConversionError(f"internal error: {len(self.order) - self.next} converted cases were not written")


def _raise_bugs(statuses: list[dict]) -> None:
    """`ConverterBug` for the first case whose converter raised something other than `InputError`."""
    for status in statuses:
        if status.get("bug"):
            raise ConverterBug(status["case"], status["traceback"])


def _status_failures(status: dict, options) -> list[dict]:
    failures = []
    for partial in status.get("partial_failures", []):
        failures.append(partial)
        log.warning("skipped part of case %s: %s: %s", status["case"], partial["file"], partial["reason"])
    if not status["ok"]:
        failures.append({"case": status["case"], "file": status["file"], "reason": status["reason"]})
        shown = status["raw_file"] if options.log_raw_paths else status["file"]
        log.warning("skipped %s: %s", shown, status["reason"])
    elif status["num_examples"] == 0:
        failures.append({"case": status["case"], "file": None, "reason": "case produced no examples"})
    return failures


def _case_fingerprint(case_fp: str, case: Case) -> str:
    """What a finished case is keyed by for resume: the options, and its split when its conversion depends on it."""
    return case_fp if case.split is None else _fingerprint([case_fp, case.split])


def _convert_cases(converter, cases, options, key, work_dir, case_fp, on_done=None) -> list[dict]:
    from medtf.progress import progress as make_progress

    statuses, todo = {}, []
    case_ids = deid.IdHasher(key, prefix="c")
    for case in cases:
        done = work_dir / f"{case_ids(case.key)}.json"
        if done.exists():
            status = json.loads(done.read_text())
            # Failed cases are retried (inputs may have been fixed); finished ones are reused if intact.
            if (status.get("options") == _case_fingerprint(case_fp, case) and status["ok"]
                    and _work_file_intact(work_dir, status)):
                statuses[case.key] = {**status, "raw_file": case.key}
                continue
        todo.append(case)
    if statuses:
        log.info("resuming: %d of %d cases already converted", len(statuses), len(cases))
        for status in statuses.values():
            if on_done:
                on_done(status)

    def finished(case, status) -> bool:
        statuses[case.key] = status
        progress.update()
        if on_done:
            on_done(status)
        return status.get("bug") or (options.strict and not status["ok"])

    # A bar on a terminal, a line every ~10% of the cases in a log, nothing with --quiet (medtf.progress).
    progress = make_progress(total=len(todo), desc=f"convert {converter.kind}", unit="case")
    if options.workers > 1 and len(todo) > 1:
        with cf.ProcessPoolExecutor(options.workers, mp_context=_worker_context(converter),
                                    initializer=_worker_init) as pool:
            futures = {pool.submit(_run_case, converter, c, options, key, work_dir, case_fp): c for c in todo}
            try:
                for future in cf.as_completed(futures):
                    if finished(futures[future], future.result()):
                        break
            except cf.process.BrokenProcessPool:
                raise ConversionError("a worker process died (out of memory?); finished cases are kept, "
                                      "re-run the same command to resume") from None
            finally:
                for f in futures:
                    f.cancel()
    else:
        for case in todo:
            if finished(case, _run_case(converter, case, options, key, work_dir, case_fp)):
                break
    progress.close()
    return [statuses[c.key] for c in cases if c.key in statuses]


def _work_file_intact(work_dir: Path, status: dict) -> bool:
    try:
        return len(iter_record_file(work_dir / f"{status['case']}.rec")) == status["num_examples"]
    except (OSError, IOError):
        return False


def _worker_context(converter):
    """forkserver: workers fork from a clean, pre-imported server (fast start, no inherited TF threads)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, type(converter).__module__])
    return ctx


def _combine_strata(values: list):
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numeric:
        return sum(numeric) / len(numeric)
    return values[0]


def _split_sort_key(name: str):
    order = {"train": 0, "val": 1, "test": 99}
    return (order.get(name, 50), name)


def converter_main(converter: Converter, argv=None, prog=None, description=None) -> int:
    """A converter module's ``main()``: parse arguments, run, print a summary; non-zero exit on failure."""
    parser = argparse.ArgumentParser(prog=prog or f"medtf convert {converter.kind}", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    converter.add_arguments(parser)
    options = parser.parse_args(argv)
    return run_from_options(converter, options)


def run_from_options(converter: Converter, options) -> int:
    """Run a conversion and return its exit code: `EXIT_OK`; `EXIT_INPUTS_FAILED` when inputs failed (their cases
    are recorded in manifest.json, the shards hold the others) unless ``--allow-failures``; `EXIT_USAGE` for
    options or inputs that allow no conversion (incl. ``--strict``); `EXIT_BUG` for a `ConverterBug`.

    A task (``--num-tasks``) exits 0 when some of its inputs failed: they are recorded for the merge, which gives
    the conversion's verdict, so a job array's ``afterok`` merge is not blocked by bad input (only by a bug).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = run_conversion(converter, options)
    except (ConversionError, ValueError, InputError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except ConverterBug as exc:
        log.error("%s", exc)
        log.error("this is a bug in the %s converter, not a problem of the input: please report it with the "
                  "traceback above; cases converted before it are kept in %s and a re-run resumes",
                  converter.kind, Path(options.output) / WORK_DIR)
        return EXIT_BUG
    if "splits" not in manifest:  # one task of a cluster conversion: no shards yet
        print(tasks.summary(manifest, converter.kind, options.output))
        return EXIT_OK
    summary = ", ".join(f"{name}: {s['num_patients']} patients / {s['num_examples']} examples"
                        for name, s in manifest["splits"].items())
    print(f"{manifest['kind']} -> {options.output}: {summary}; {manifest['num_failed']} failed inputs")
    if manifest["num_failed"] and not options.allow_failures:
        log.error("%d inputs failed (listed under 'failures' in %s); the shards hold the other cases. Fix them and "
                  "re-run (converted cases are reused), or pass --allow-failures to accept the loss and exit 0",
                  manifest["num_failed"], Path(options.output) / "manifest.json")
        return EXIT_INPUTS_FAILED
    return EXIT_OK
