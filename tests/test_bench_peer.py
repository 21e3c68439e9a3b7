"""``crossdistill bench peer`` at toy sizes: the table has a row per method and the teacher-cache row,
each against the plain loop, with the machine named. Never a timing assertion."""
from __future__ import annotations

import json
import math

from crossdistill.lab import bench
from crossdistill.lab.bench.peer import CACHE, FAST, PLAIN, cpu_model

TOY = ["student=resnet8", "teacher=resnet14", "b=4", "size=16", "classes=5", "n=40", "k=8", "rounds=1", "warmup=0"]


def test_bench_peer_writes_a_row_per_method_and_the_cache_row(tmp_path):
    lines = []
    out = tmp_path / "peer.json"
    res = bench.run_bench("peer", [*TOY, f"out={out}"], print_fn=lines.append)["peer"]
    expected = {f"{m}: {FAST}" for m in ("kd", "fitnet", "crd", "dpk")} | {f"kd: {CACHE}"}
    assert set(res["rows"]) == expected
    for name, row in res["rows"].items():
        assert row["plain"].endswith(PLAIN)
        assert math.isfinite(row["speedup"]["median"]) and row["speedup"]["median"] > 0
    assert res["machine"]["cpu_model"] == cpu_model() and res["machine"]["cpu_capability"]
    text = "\n".join(lines)
    assert "bench peer on" in text and res["machine"]["cpu_capability"] in text
    assert all(name in text for name in expected)
    assert json.loads(out.read_text())["rows"].keys() == res["rows"].keys()


def test_bench_peer_without_kd_still_times_the_plain_kd_loop_for_the_cache_row(tmp_path):
    res = bench.run_bench("peer", [*TOY, "methods=fitnet", f"out={tmp_path / 'p.json'}"], print_fn=lambda _: None)
    assert set(res["peer"]["rows"]) == {f"fitnet: {FAST}", f"kd: {CACHE}"}
    assert res["peer"]["rows"][f"kd: {CACHE}"]["plain"] == f"kd: {PLAIN}"
