"""Batch parsing at scale: inputs from folder trees and manifests, outputs mirrored under the output
folder, a results table written as it goes, resume, shards, and Ray Data for a cluster.

Every engine runs the same per-batch work, ``agrnet.predict.parse_batch``. State lives in
``OUT/.agrnet``: ``parts/`` (journals of rows, appended per batch, and Parquet parts cut from them),
``attempts/`` (markers of batches in progress: a worker that dies leaves one behind) and ``tmp/``
(files being written, renamed into place when complete). ``OUT/results.parquet`` is the merge of all
rows, one per input (the latest).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import math
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agrnet.data.datasets import IMAGE_SUFFIXES
from agrnet.devices import set_threads
from agrnet.inference import Parser
from agrnet.predict import (
    OUTPUT_ENDINGS,
    VIDEO_SUFFIXES,
    Settings,
    Task,
    is_agrnet_output,
    parse_batch,
    printable,
    result_row,
)

STATE = ".agrnet"
RESULTS = "results.parquet"
DONE = ("ok", "no_face")
MEDIA_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES
Rows = list[dict[str, Any]]
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f]")  # no path holds these (tab allowed)


def parse_shard(text: str | None, environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """``R/N`` -> (R, N); without it, torchrun's ``RANK``/``WORLD_SIZE`` when both are set, else (0, 1)."""
    if text is None:
        if "RANK" not in environ or "WORLD_SIZE" not in environ:
            return 0, 1
        text, origin = f"{environ['RANK']}/{environ['WORLD_SIZE']}", "RANK/WORLD_SIZE"
    else:
        origin = "--shard"
    found = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not found or not int(found.group(1)) < int(found.group(2)):
        raise ValueError(f"{origin} must be R/N with 0 <= R < N (shard R of N), got {text!r}")
    return int(found.group(1)), int(found.group(2))


# ---- listing ---------------------------------------------------------------------------------------


def list_tasks(
    inputs: Sequence[str], out: str, recursive: bool = False, manifest: str | None = None, column: str | None = None
) -> list[Task]:
    """Every input once, in a fixed order (so that shards agree), with its output key: its path
    relative to its root (the folder given; several inputs: their common folder; a manifest's
    entries: the manifest's folder), without the suffix. Inputs that cannot be listed are tasks with
    a problem. A manifest that is not a list of paths is a ValueError."""
    entries: list[tuple[str, str | None]] = []  # (path as listed, problem)
    roots: list[str] = []
    skip = os.path.abspath(out)
    for item in inputs:
        if os.path.isdir(item):
            roots.append(os.path.abspath(item))
            entries += [(path, None) for path in _walk(item, recursive, skip)]
        else:
            roots.append(os.path.dirname(os.path.abspath(item)))
            entries.append((item, None if os.path.isfile(item) else f"{printable(item)}: no such file or directory"))
    if manifest is not None:
        roots.append(os.path.dirname(os.path.abspath(manifest)))
        entries += read_manifest(manifest, column)
    base = roots[0] if len(roots) == 1 else os.path.commonpath(roots) if roots else os.getcwd()
    return _keyed(entries, base)


def _walk(folder: str, recursive: bool, skip: str) -> Iterator[str]:
    """Files of ``folder`` in sorted order (with ``recursive``, its subfolders' image and video files
    too), without hidden names, the output folder, or agrnet's outputs of earlier runs."""
    stack = [folder]
    while stack:
        current = stack.pop()
        with os.scandir(current) as scan:
            found = sorted((entry for entry in scan if not entry.name.startswith(".")), key=lambda e: e.name)
        folders = []
        for entry in found:
            if entry.is_dir():
                if recursive and os.path.abspath(entry.path) != skip:
                    folders.append(entry.path)
            elif entry.is_file() and (not recursive or entry.name.lower().endswith(MEDIA_SUFFIXES)):
                if not (entry.name.endswith(OUTPUT_ENDINGS) and is_agrnet_output(entry.path)):
                    yield entry.path
        stack += reversed(folders)  # depth first, in name order


def _keyed(entries: list[tuple[str, str | None]], base: str) -> list[Task]:
    """Tasks with distinct keys; inputs sharing a key (``face.jpg``, ``face.png``) get the suffix
    added (``face_jpg``, ``face_png``); the same file listed twice is kept once."""
    seen: set[str] = set()
    tasks: list[Task] = []
    prefix = base.rstrip("/") + "/"
    for path, problem in entries:
        absolute = os.path.normpath(os.path.abspath(path))
        if absolute in seen:
            continue
        seen.add(absolute)
        relative = absolute[len(prefix) :] if absolute.startswith(prefix) else absolute.lstrip("/")
        tasks.append(Task(path, os.path.splitext(relative)[0], problem))
    counts = Counter(task.key for task in tasks)
    if len(counts) == len(tasks):
        return tasks
    renamed = [
        Task(t.source, f"{t.key}_{os.path.splitext(t.source)[1][1:].lower()}", t.problem) if counts[t.key] > 1 else t
        for t in tasks
    ]
    taken: set[str] = set()
    result = []
    for task in renamed:
        if task.key in taken:
            task = Task(task.source, task.key, f"{printable(task.source)}: its outputs would be those of another input")
        taken.add(task.key)
        result.append(task)
    return result


def read_manifest(path: str, column: str | None = None) -> list[tuple[str, str | None]]:
    """(path, problem) per entry: one path per line (``#`` comments and blank lines skipped), or the
    ``column`` (default ``path``) of a .csv or .parquet file; relative paths are relative to the
    manifest's folder. Raises ValueError for a manifest that is not a list of paths."""
    name = printable(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".csv", ".parquet"):
        values = _manifest_column(path, suffix, column or "path")
        entries = [(v, None) if v else (f"{path}:{n}", f"{name} row {n}: empty path") for n, v in enumerate(values, 2)]
    else:
        if column is not None:
            raise ValueError(f"--manifest-column is for .csv and .parquet manifests; {name} is one path per line")
        entries = _manifest_lines(path)
    if not any(problem is None and p.lower().endswith(MEDIA_SUFFIXES) for p, problem in entries):
        raise ValueError(
            f"manifest {name}: none of its {len(entries)} entries is an image or video path; give one path per "
            "line, or a CSV or Parquet file with a path column (--manifest-column)"
        )
    folder = os.path.dirname(path)
    return [(p if problem else os.path.join(folder, p), problem) for p, problem in entries]


def _manifest_lines(path: str) -> list[tuple[str, str | None]]:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"manifest {printable(path)}: cannot be read ({error.strerror or error})") from None
    if b"\0" in data[:65536]:
        raise ValueError(f"manifest {printable(path)}: binary data, not a list of paths (one path per line)")
    entries: list[tuple[str, str | None]] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.rstrip(b"\r").decode("utf-8", "surrogateescape")  # Latin-1 file names are valid paths
        if not line.strip() or line.startswith("#"):
            continue
        if _CONTROL.search(line):
            entries.append((f"{path}:{number}", f"{printable(path)} line {number}: unreadable (control characters)"))
        else:
            entries.append((line, None))
    return entries


def _manifest_column(path: str, suffix: str, column: str) -> list[str | None]:
    name = printable(path)
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            if column not in schema.names:
                raise ValueError(f"manifest {name}: no column {column!r} (columns: {', '.join(schema.names)})")
            values = pq.read_table(path, columns=[column])[column]
            if values.type not in ("string", "large_string"):
                raise ValueError(f"manifest {name}: column {column!r} holds {values.type}, not paths")
            return values.to_pylist()
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            names = reader.fieldnames or []
            if column not in names:
                raise ValueError(f"manifest {name}: no column {column!r} (columns: {', '.join(names)})")
            return [row[column] for row in reader]
    except (OSError, csv.Error) as error:
        raise ValueError(f"manifest {name}: cannot be read ({error})") from None
    except Exception as error:  # pyarrow's errors for a file that is no Parquet
        if isinstance(error, ValueError) and str(error).startswith("manifest"):
            raise
        raise ValueError(f"manifest {name}: not a readable Parquet file ({' '.join(str(error).split())})") from None


# ---- the results table -----------------------------------------------------------------------------


def schema() -> Any:
    """The results table: one row per input (see ``agrnet.predict.result_row``)."""
    import pyarrow as pa

    face = pa.struct(
        [("box", pa.list_(pa.float32())), ("landmarks", pa.list_(pa.list_(pa.float32()))), ("score", pa.float32())]
    )
    return pa.schema([
        ("path", pa.string()), ("output", pa.string()), ("status", pa.string()), ("reason", pa.string()),
        ("note", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("frames", pa.int32()),
        ("faces", pa.list_(face)), ("pixels", pa.list_(pa.int64())), ("outputs", pa.list_(pa.string())),
        ("seconds", pa.float32()), ("model", pa.string()), ("model_version", pa.string()),
    ])  # fmt: skip


class ResultsWriter:
    """Rows of one process: appended to a journal after every batch (a crash loses only the batch in
    flight), cut into a Parquet part every ``part_rows`` rows. The journal is locked while in use so
    that a merge by another process leaves it alone."""

    def __init__(self, out: Path, part_rows: int = 10_000) -> None:
        self.parts = out / STATE / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        self.name = f"{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}"
        self.part_rows, self.count, self.rows = part_rows, 0, []
        self._open()

    def _open(self) -> None:
        self.journal = self.parts / f"{self.name}-{self.count:06d}.jsonl"
        self.file = open(self.journal, "a", encoding="utf-8")  # noqa: SIM115 - closed in cut()
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def add(self, rows: Rows) -> None:
        self.file.write("".join(json.dumps(row) + "\n" for row in rows))
        self.file.flush()
        self.rows += rows
        if len(self.rows) >= self.part_rows:
            self.cut()
            self._open()

    def cut(self) -> None:
        """Write the journal's rows as a Parquet part, then drop the journal."""
        if self.rows:
            _write_table(_table(self.rows), self.parts / f"{self.name}-{self.count:06d}.parquet")
        self.file.close()
        self.journal.unlink()
        self.count, self.rows = self.count + 1, []


def _table(rows: Rows) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema())


def _write_table(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def _read_journal(path: Path) -> Any:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):  # the last line of a killed writer may be cut
                rows.append(json.loads(line))
    return _table(rows)


def _in_use(path: Path) -> bool:
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def merge_results(out: Path, columns: list[str] | None = None) -> Any:
    """Fold the parts and finished journals into ``OUT/results.parquet`` (latest row per input path)
    and return it; journals that other processes are still writing are left for a later merge.
    ``columns``: when there is nothing to fold in, read only these (a rerun over a million done photos
    needs the status and output columns, not every face's landmarks)."""
    import pyarrow.parquet as pq

    state = out / STATE
    (state / "parts").mkdir(parents=True, exist_ok=True)
    with open(state / "merge.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = out / RESULTS
        live, pending = False, []
        for path in sorted((state / "parts").iterdir()):
            if path.suffix == ".parquet" or (path.suffix == ".jsonl" and not (live := live or _in_use(path))):
                pending.append(path)
        if not pending:
            table = schema().empty_table()
            if results.exists():
                table = pq.read_table(results, columns=columns)
                table = table.cast(schema()) if columns is None else table
        else:
            tables = [pq.read_table(results).cast(schema())] if results.exists() else []
            tables += [pq.read_table(p) if p.suffix == ".parquet" else _read_journal(p) for p in pending]
            table = _latest_per_path(tables)
            _write_table(table, results)
            for path in pending:
                path.unlink()
        if not live:  # no writer is running: what is left in tmp/ belongs to killed processes
            for path in (state / "tmp").glob(".agrnet-*.tmp"):
                path.unlink(missing_ok=True)
    return table if columns is None else table.select(columns)


def _latest_per_path(tables: list[Any]) -> Any:
    import numpy as np
    import pyarrow as pa

    table = pa.concat_tables(tables) if tables else schema().empty_table()
    numbered = table.append_column("_row", pa.array(np.arange(len(table))))
    latest = numbered.group_by("path", use_threads=False).aggregate([("_row", "max")])["_row_max"]
    return table.take(np.sort(latest.to_numpy()))


def done_keys(table: Any) -> set[str]:
    """Outputs of the inputs done: a row is written only once all of its outputs were verified on disk."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return set(table.filter(pc.is_in(table["status"], pa.array(DONE)))["output"].to_pylist())


# ---- the work, in every engine ---------------------------------------------------------------------


def _digest(keys: Sequence[str]) -> str:
    return hashlib.sha1("\0".join(keys).encode("utf-8", "surrogateescape")).hexdigest()[:24]


def run_batch(parser: Parser, tasks: Sequence[Task], settings: Settings, attempts: Path) -> Rows:
    """``parse_batch`` behind a marker file that only a dead worker leaves behind. A batch found marked
    is parsed one photo at a time, each behind its own marker: a photo whose worker died while parsing
    it is failed (and not retried) instead of killing every worker that takes it."""
    marker = attempts / _digest([task.key for task in tasks])
    if not marker.exists():
        marker.touch()
        try:
            return parse_batch(parser, tasks, settings)
        finally:
            marker.unlink()
    rows = []
    for task in tasks:
        photo_marker = attempts / _digest([task.key, "photo"])
        if photo_marker.exists():
            reason = (f"{printable(task.source)}: a worker process died while parsing it, twice; not retried "
                      f"(delete {printable(attempts)} to retry)")  # fmt: skip
            rows.append(result_row(task, settings, "failed", reason=reason))
            continue
        photo_marker.touch()
        try:
            rows += parse_batch(parser, [task], settings)
        finally:
            photo_marker.unlink()
    marker.unlink()
    return rows


@dataclass(frozen=True)
class RayOptions:
    """address: an existing cluster (None: a local Ray); workers: parser actors; cpus, gpus: per actor."""

    address: str | None = None
    workers: int = 1
    cpus: float = 1
    gpus: float = 0


class RayParser:
    """A Ray Data actor: loads the model once, then parses batches of tasks (a pyarrow table)."""

    def __init__(self, make_parser: Callable[[], Parser], settings: Settings, attempts: str, threads: int) -> None:
        set_threads(max(1, threads))
        self.parser, self.settings, self.attempts = make_parser(), settings, Path(attempts)

    def __call__(self, batch: Any) -> Any:
        columns = batch.to_pydict()
        tasks = [
            Task(os.fsdecode(source), os.fsdecode(key), problem)
            for source, key, problem in zip(columns["source"], columns["key"], columns["problem"], strict=True)
        ]
        return _table(run_batch(self.parser, tasks, self.settings, self.attempts))


def _run_ray(
    make_parser: Callable[[], Parser], tasks: list[Task], settings: Settings, attempts: Path,
    batch_size: int, options: RayOptions, on_rows: Callable[[Rows], None],
) -> None:  # fmt: skip
    import pyarrow as pa
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=options.address or "local", include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        # Blocks of a few batches: enough of them to keep every actor busy; a retried block is small.
        rows = max(batch_size, min(1000, math.ceil(len(tasks) / (4 * options.workers))))
        blocks = [
            pa.table({
                "source": pa.array([os.fsencode(t.source) for t in chunk], pa.binary()),
                "key": pa.array([os.fsencode(t.key) for t in chunk], pa.binary()),
                "problem": pa.array([t.problem for t in chunk], pa.string()),
            })
            for chunk in (tasks[i : i + rows] for i in range(0, len(tasks), rows))
        ]  # fmt: skip
        dataset = ray.data.from_arrow(blocks).map_batches(
            RayParser, batch_size=batch_size, batch_format="pyarrow", num_cpus=options.cpus, num_gpus=options.gpus,
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            fn_constructor_kwargs={"make_parser": make_parser, "settings": settings, "attempts": str(attempts),
                                   "threads": max(1, int(options.cpus))},
        )  # fmt: skip
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            on_rows(table.to_pylist())
    finally:
        if started:
            ray.shutdown()


# ---- one run ---------------------------------------------------------------------------------------


@dataclass
class BatchReport:
    """One run of one shard: counts over its inputs, this run's failures and notes, the merged table's size."""

    out: Path
    listed: int = 0
    done_before: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    table_rows: int = 0
    interrupted: bool = False
    shard: tuple[int, int] = (0, 1)

    def add(self, rows: Rows) -> None:
        for row in rows:
            self.counts[row["status"]] += 1
            if row["status"] == "failed":
                self.failures.append((row["path"], row["reason"]))
            if row["note"]:
                self.notes.append(row["note"])

    def summary(self, shown: int = 50) -> str:
        lines = [f"note: {note}" for note in self.notes[:shown]]
        left = self.listed - self.done_before - sum(self.counts.values())
        lines.append(
            f"{self.counts['ok'] + self.counts['no_face']} parsed now ({self.counts['no_face']} without a face), "
            f"{self.counts['failed']} failed, {self.done_before} done before, {left} left to do"
            + (f" (shard {self.shard[0]}/{self.shard[1]})" if self.shard[1] > 1 else "")
        )
        if self.interrupted:
            lines.append("interrupted: every photo counted above is complete; run the same command again to continue")
        lines.append(f"results: {printable(self.out / RESULTS)} ({self.table_rows} rows)")
        for path, reason in self.failures[:shown]:
            lines.append(f"  FAILED {path}: {reason.removeprefix(f'{path}: ')}")
        if len(self.failures) > shown:
            lines.append(f"  ... and {len(self.failures) - shown} more failures: see the status column of the table")
        return "\n".join(lines)


def predict_tree(
    make_parser: Callable[[], Parser],
    tasks: list[Task],
    settings: Settings,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 8,
    ray_options: RayOptions | None = None,
    part_rows: int = 10_000,
) -> BatchReport:
    """Parse the tasks of ``shard`` not done yet (locally, or on Ray with ``ray_options``), recording
    every row; Ctrl-C stops after the batch in flight (``report.interrupted``), with its rows recorded."""
    out = Path(settings.out)
    attempts = out / STATE / "attempts"
    settings = replace(settings, tmp_dir=str(out / STATE / "tmp"))
    for folder in (attempts, Path(settings.tmp_dir)):
        folder.mkdir(parents=True, exist_ok=True)
    mine = tasks[shard[0] :: shard[1]]
    done = done_keys(merge_results(out, columns=["status", "output"]))
    todo = [task for task in mine if printable(task.key) not in done]
    report = BatchReport(out, listed=len(mine), done_before=len(mine) - len(todo), shard=shard)
    print(f"{len(mine)} inputs: {report.done_before} done before, {len(todo)} to do", flush=True)
    writer = ResultsWriter(out, part_rows)
    bar = tqdm(total=len(todo), desc="predict", unit="photo")

    def record(rows: Rows) -> None:
        writer.add(rows)
        report.add(rows)
        bar.update(len(rows))
        bar.set_postfix_str(f"failed {report.counts['failed']}", refresh=False)

    try:
        if todo and ray_options is not None:
            _run_ray(make_parser, todo, settings, attempts, batch_size, ray_options, record)
        elif todo:
            parser = make_parser()
            for start in range(0, len(todo), batch_size):
                record(run_batch(parser, todo[start : start + batch_size], settings, attempts))
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
        writer.cut()
    report.table_rows = len(merge_results(out, columns=["path"]))
    return report
