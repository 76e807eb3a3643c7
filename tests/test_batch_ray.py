"""``--engine ray`` on a local Ray (2 CPUs): same rows as the local engine, and actors that die."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
import test_batch
from test_batch import KILL, StandIn, _photo, _rows

from agrnet.batch import RayOptions, list_tasks, predict_tree
from agrnet.predict import Settings, is_agrnet_output

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'agrnet[ray]'")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.cloudpickle.register_pickle_by_value(test_batch)  # the actors cannot import the tests
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    yield
    ray.shutdown()


def _photos(folder: Path, count: int, killer: int | None = None) -> list[Path]:
    return [_photo(folder / f"{i:02d}.png", red=20 * i, green=KILL if i == killer else 0) for i in range(count)]


def _ray_run(folder: Path, out: Path, make_parser=StandIn, workers: int = 2):
    settings = Settings(str(out), ("labels",), model="standin", model_version="0")
    tasks = list_tasks([str(folder)], str(out))
    return predict_tree(make_parser, tasks, settings, batch_size=2, ray_options=RayOptions(workers=workers))


def _without_timing(rows: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in row.items() if k != "seconds"} for row in rows), key=lambda row: row["path"])


def test_ray_gives_the_rows_and_files_of_the_local_engine(tmp_path: Path) -> None:
    _photos(tmp_path / "in", 10)
    report = _ray_run(tmp_path / "in", tmp_path / "ray")
    assert report.counts == {"ok": 10}
    settings = Settings(str(tmp_path / "local"), ("labels",), model="standin", model_version="0")
    local = predict_tree(StandIn, list_tasks([str(tmp_path / "in")], str(tmp_path / "local")), settings)
    assert local.counts == {"ok": 10}
    assert [r | {"path": ""} for r in _without_timing(_rows(tmp_path / "ray"))] == [
        r | {"path": ""} for r in _without_timing(_rows(tmp_path / "local"))
    ]
    for i in range(10):
        name = f"{i:02d}_labels.png"
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_an_actor_killed_mid_run_is_replaced_and_no_photo_is_lost_or_repeated(tmp_path: Path) -> None:
    _photos(tmp_path / "in", 12, killer=7)
    flag = tmp_path / "killed"
    report = _ray_run(tmp_path / "in", tmp_path / "out", functools.partial(StandIn, kill=True, once=str(flag)))
    assert flag.exists()  # an actor did die (SIGKILL) with photos in flight
    assert report.counts == {"ok": 12}
    rows = _rows(tmp_path / "out")
    assert sorted(row["output"] for row in rows) == [f"{i:02d}" for i in range(12)]  # each exactly once
    assert all(is_agrnet_output(tmp_path / "out" / row["outputs"][0]) for row in rows)
    assert len(list((tmp_path / "out").glob("*.png"))) == 12


def test_a_photo_that_kills_every_actor_fails_alone(tmp_path: Path) -> None:
    _photos(tmp_path / "in", 6, killer=3)
    report = _ray_run(tmp_path / "in", tmp_path / "out", functools.partial(StandIn, kill=True), workers=1)
    assert report.counts == {"ok": 5, "failed": 1}
    (failure,) = report.failures
    assert failure[0].endswith("03.png") and "a worker process died while parsing it, twice" in failure[1]
