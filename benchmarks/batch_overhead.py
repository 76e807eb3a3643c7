"""Question: what does agrnet predict's bookkeeping cost per million photos, without any model?

A simulated manifest of N photo paths (no files: nothing is decoded) goes through each stage in a
fresh process, so that each peak memory is that stage's own: listing (``list_tasks``), sharding
(8 shards), the results table (rows recorded through ``ResultsWriter`` in batches of 8, then merged
into results.parquet) and the resume skip of a rerun when all N are done (listing, merge, done set,
filter: ``predict_tree`` with nothing left to parse). Writes
benchmarks/results/batch_overhead[_quick].json and .md; figures are scaled to 1,000,000 photos.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agrnet.batch import ResultsWriter, list_tasks, merge_results, predict_tree
from agrnet.predict import Settings, Task, result_row
from common import RESULTS, result_name, table, write_result

STAGES = ("listing", "sharding", "results_table", "resume_skip")


def _manifest(folder: Path, count: int) -> Path:
    path = folder / "manifest.txt"
    path.write_text("".join(f"photos/{i // 1000:04d}/{i:07d}.jpg\n" for i in range(count)))
    return path


def _rows(tasks: list[Task], settings: Settings) -> list[dict]:
    return [result_row(t, settings, "ok", width=512, height=512, pixels=[1] * 19, outputs=[f"{t.key}_labels.png"])
            for t in tasks]  # fmt: skip


def _never() -> None:
    raise AssertionError("every photo is done: the parser must not be loaded")


def run_stage(stage: str, folder: Path, count: int) -> dict[str, float]:
    manifest = _manifest(folder, count) if stage == "listing" else folder / "manifest.txt"
    out = folder / "out"
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the interpreter, torch, pyarrow
    settings = Settings(str(out), ("labels",), model="standin", model_version="0")
    start = time.perf_counter()
    if stage == "listing":
        list_tasks([], str(out), manifest=str(manifest))
    elif stage == "sharding":
        tasks = list_tasks([], str(out), manifest=str(manifest))
        start = time.perf_counter()
        assert sum(len(tasks[rank::8]) for rank in range(8)) == count
    elif stage == "results_table":
        tasks = list_tasks([], str(out), manifest=str(manifest))
        rows = _rows(tasks, settings)
        start = time.perf_counter()
        writer = ResultsWriter(out)
        for i in range(0, count, 8):
            writer.add(rows[i : i + 8])
        writer.cut()
        assert len(merge_results(out)) == count
    else:
        report = predict_tree(_never, list_tasks([], str(out), manifest=str(manifest)), settings)
        assert report.done_before == count
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak, "stage_rss_mb": peak - baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20,000 photos instead of 1,000,000")
    parser.add_argument("--photos", type=int)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # one stage, in a child process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    count = args.photos or (20_000 if args.quick else 1_000_000)
    if args.stage:
        print(json.dumps(run_stage(args.stage, Path(args.folder), count)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for stage in STAGES:
            command = [sys.executable, __file__, "--stage", stage, "--folder", folder, "--photos", str(count)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"stage": stage, "photos": count, "seconds": round(measured["seconds"], 2),
                         "seconds_per_million": round(measured["seconds"] * 1e6 / count, 1),
                         "peak_rss_mb": round(measured["peak_rss_mb"]),
                         "stage_rss_mb": round(measured["stage_rss_mb"])})  # fmt: skip
    print(table(rows, list(rows[0])))
    name = result_name("batch_overhead", args.quick)
    path = write_result(name, {"photos": count, "rows": rows})
    (RESULTS / f"{name}.md").write_text(_markdown(rows))
    print(f"wrote {path}")


def _markdown(rows: list[dict]) -> str:
    lines = ["| stage | photos | seconds | seconds per million | peak RSS (MB) | RSS added by the stage (MB) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['stage']} | {r['photos']} | {r['seconds']} | {r['seconds_per_million']} | {r['peak_rss_mb']} "
              f"| {r['stage_rss_mb']} |" for r in rows]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
