"""Conversion on a cluster: N tasks (a SLURM job array) each convert a share of the patients, then one merge.

    medtf convert KIND --input IN --output OUT [options] --num-tasks N --task-index I    # I = 0 .. N-1, any order
    medtf convert KIND --input IN --output OUT [options] --merge                          # after every task

A task discovers *all* cases (cheap: file listing), takes its share and converts it into the engine's resumable
per-case cache ``OUT/.work`` exactly as a single-process conversion would (so a preempted task resumes where it
stopped). It writes no shard: the merge assigns splits over all patients, at once, and copies the cached records
into shards in the single process's order, so splits, shards and manifest are byte-identical for any N — and to a
conversion without ``--num-tasks``. The share: every case of one patient goes to the same task; patients are dealt
by pseudonym (no site or date pattern), largest first, to the task with the fewest cases so far.

Tasks may run at the same time on several nodes: each writes only its own cases' files (atomically) and its status
``OUT/.work/task-IIIII-of-NNNNN.json``, which records the options it ran with. The merge refuses, naming the cases
and tasks, while a case has no finished conversion, and when a task ran with other input or options.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from medtf.data.manifest import write_json_atomic

TASK_STATUS = "task-{index:05d}-of-{count:05d}.json"
SETTING_NAMES = {  # what a differing setting is called in messages
    "case_options": "the converter's options",
    "split": "--split / --folds / --seed",
    "shard_size_mb": "--shard-size-mb",
    "compression": "--compression",
    "id_key": "the ID key (--id-salt / --id-key-file / OUTPUT.idkey)",
    "input": "the input files (another --input, or files changed since)",
}


class TaskError(ValueError):
    """A task or merge that cannot run as asked (bad task options, unfinished tasks, options that differ)."""


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "conversion on a cluster", "split the work over N tasks (e.g. a SLURM job array; `medtf slurm convert` "
        "submits both steps), then merge; the result is byte-identical to one conversion without these options")
    group.add_argument("--num-tasks", type=int, default=None, metavar="N",
                       help="convert only one task's share of the patients into OUTPUT/.work (no shards yet)")
    group.add_argument("--task-index", type=int, default=None, metavar="I",
                       help="which share, 0..N-1 (default: $SLURM_ARRAY_TASK_ID)")
    group.add_argument("--merge", action="store_true",
                       help="after every task finished: write the shards and manifest.json (same --input, --output "
                            "and options as the tasks)")


def task_from_options(options, environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """``(index, count)`` when this run is one task; None for a whole conversion or a merge."""
    count, index = getattr(options, "num_tasks", None), getattr(options, "task_index", None)
    merge = getattr(options, "merge", False)
    if count is not None and count < 1:
        raise TaskError(f"--num-tasks must be at least 1, got {count}")
    if merge:
        if index is not None:
            raise TaskError("--merge combines every task's work: it takes no --task-index")
        return None
    if count is None:
        if index is not None:
            raise TaskError("--task-index needs --num-tasks (how many tasks share the patients)")
        return None
    source = "--task-index"
    if index is None:
        value = environ.get("SLURM_ARRAY_TASK_ID")
        if value is None:
            raise TaskError("--num-tasks needs --task-index I (0..N-1), or $SLURM_ARRAY_TASK_ID in a job array; "
                            "--merge when every task has finished")
        source = "$SLURM_ARRAY_TASK_ID"
        try:
            index = int(value)
        except ValueError:
            raise TaskError(f"$SLURM_ARRAY_TASK_ID={value!r} is not a task index") from None
    if not 0 <= index < count:
        raise TaskError(f"{source} {index} is outside 0..{count - 1} (--num-tasks {count})")
    return index, count


def assign_tasks(case_patients: Mapping[str, str], num_tasks: int) -> dict[str, int]:
    """``case pseudonym -> task index``; all cases of one patient share a task, tasks hold about as many cases.

    Patients (pseudonyms) are dealt largest first, ties by pseudonym, each to the task with the fewest cases so far
    (ties: the lower index). Depends only on the cases, never on the order they were found in.
    """
    sizes = Counter(case_patients.values())
    load = [0] * num_tasks
    task_of_patient = {}
    for patient in sorted(sizes, key=lambda p: (-sizes[p], p)):
        task = min(range(num_tasks), key=lambda t: (load[t], t))
        task_of_patient[patient] = task
        load[task] += sizes[patient]
    return {case: task_of_patient[patient] for case, patient in case_patients.items()}


def normalized(settings: dict) -> dict:
    """``settings`` as it reads back from JSON (paths become strings), so a written one compares equal."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def write_task_status(work_dir: Path, index: int, count: int, settings: dict, cases: Sequence[str],
                      **fields) -> dict:
    status = {"task": index, "num_tasks": count, "settings": normalized(settings), "cases": list(cases), **fields}
    write_json_atomic(work_dir / TASK_STATUS.format(index=index, count=count), status)
    return status


def read_task_statuses(work_dir: Path) -> list[dict]:
    statuses = []
    for path in sorted(work_dir.glob("task-*-of-*.json")):
        try:
            statuses.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # half-written by a task killed mid-write cannot happen (atomic), but a stray file can
    return statuses


def settings_problems(work_dir: Path, settings: dict, num_tasks: int | None) -> list[str]:
    """The tasks that ran with other input or options than the merge was given, each with what differs."""
    settings = normalized(settings)
    wrong = []
    for status in read_task_statuses(work_dir):
        if num_tasks is not None and status.get("num_tasks") != num_tasks:
            continue
        theirs = status.get("settings", {})
        differ = [k for k in sorted(set(settings) | set(theirs)) if settings.get(k) != theirs.get(k)]
        if differ:
            wrong.append(f"task {status['task']} of {status['num_tasks']} (" +
                         ", ".join(SETTING_NAMES.get(k, k) for k in differ) + ")")
    return wrong


def settings_message(problems: Sequence[str]) -> str:
    return (f"{len(problems)} task(s) ran with other input or options than this merge: {'; '.join(problems)}. "
            f"Give every task and --merge the same --input, --output and options (re-running a task with them "
            f"reuses the cases it converted when only split or shard options differ)")


def missing_message(missing: Sequence[str], num_cases: int, work_dir: Path, case_patients: Mapping[str, str],
                    num_tasks: int | None, other_options: Sequence[str] = (), problems: Sequence[str] = ()) -> str:
    """Why a merge cannot go on: which cases have no finished conversion, and which tasks were to convert them."""
    statuses = read_task_statuses(work_dir)
    if num_tasks is None:
        counts = Counter(s.get("num_tasks") for s in statuses)
        num_tasks = counts.most_common(1)[0][0] if counts else None
    lines = [f"cannot merge: {len(missing)} of {num_cases} cases have no finished conversion in {work_dir}"]
    if num_tasks:
        of_task = assign_tasks(case_patients, num_tasks)
        reported = {s["task"]: s for s in statuses if s.get("num_tasks") == num_tasks}
        for task in sorted({of_task[c] for c in missing}):
            mine = [c for c in missing if of_task[c] == task]
            status = reported.get(task)
            if status is None:
                state = "has not started (no status file)"
            elif not status.get("finished"):
                state = "started but did not finish (preempted, killed or still running)"
            else:
                state = "finished, but its case files are gone or damaged"
            lines.append(f"  task {task} of {num_tasks} {state}: {_cases(mine)}")
        lines.append(f"Run those tasks (again: a task resumes where it stopped), e.g. --num-tasks {num_tasks} "
                     f"--task-index I with the same options, then --merge.")
    else:
        lines.append(f"  {_cases(missing)}")
        lines.append("Run the tasks (--num-tasks N --task-index I, same options) that convert them, then --merge.")
    if other_options:
        lines.append(f"  {len(other_options)} of them were converted with other converter options or ID key: "
                     f"{_cases(other_options)}")
    if problems:
        lines.append("Also: " + settings_message(problems))
    return "\n".join(lines)


def _cases(ids: Sequence[str], shown: int = 8) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"case{'s' if len(ids) != 1 else ''} {', '.join(ids[:shown])}{more}"


def summary(status: dict, kind: str, output) -> str:
    n = status["num_cases"]
    done = f"{n} case{'s' if n != 1 else ''}, {status['num_examples']} examples, {status['num_failed']} failed inputs"
    return (f"{kind} task {status['task']} of {status['num_tasks']} -> {Path(output) / '.work'}: {done}; "
            f"when all {status['num_tasks']} tasks have finished, run the same command with --merge "
            f"instead of --num-tasks/--task-index")
