"""bench/scale.py's path at a small size: every role over HTTP on the instant server, kill -9 halfway, rerun."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import scale  # noqa: E402  (bench/scale.py)


@pytest.mark.slow
def test_small_scale_build_resumes_after_kill_and_reruns_for_free(tmp_path: Path) -> None:
    report = scale.measure([400], 400, tmp_path, batch_size=32)
    run = report["by_items"]["400"]
    assert run["funnel"]["collect"] == "400 -> 400" and "failed" not in " ".join(run["funnel"].values())
    assert run["requests"] == sum(
        int(run["funnel"][s].split(" -> ")[0]) for s in scale.MODEL_STAGES
    )  # one request per item
    assert sum(run["splits"].values()) == int(run["funnel"]["assemble"].split(" -> ")[1]) > 0
    assert 0 < report["kill"]["killed_at_model_items"] < report["kill"]["of_model_items"]
    assert report["same_dataset_after_kill"] is True
    assert report["rerun"]["requests"] == 0 and report["rerun"]["share_of_first"] < 1
    assert report["peak_rss_mb"] > 0 and report["requests_per_s"] > 0


def test_killed_and_uninterrupted_datasets_are_told_apart(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "a", "prompt": "p", "provenance": '{"filter": {"verdict": "unsafe", "time": "t1"}}'}]
    for name, verdict, time in (("one", "unsafe", "t1"), ("two", "unsafe", "t2"), ("three", "safe", "t1")):
        (tmp_path / name / "dataset").mkdir(parents=True)
        row = {**rows[0], "provenance": f'{{"filter": {{"verdict": "{verdict}", "time": "{time}"}}}}'}
        pq.write_table(pa.Table.from_pylist([row]), tmp_path / name / "dataset" / "train-00000-of-00001.parquet")
    assert scale.dataset_rows(tmp_path / "one") == scale.dataset_rows(tmp_path / "two")  # only the time differs
    assert scale.dataset_rows(tmp_path / "one") != scale.dataset_rows(tmp_path / "three")
