"""The scoreboard's bookkeeping: a run over some families updates the earlier results instead of erasing them."""

import sys

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import run as scoreboard  # noqa: E402  (benchmarks/ is not a package)


def test_a_run_over_some_families_replaces_theirs_and_keeps_the_rest(tmp_path):
    previous = {
        "command": "python benchmarks/run.py", "date": "2026-11-23 10:00",
        "families": {"vae": {"unit": "images", "score": 1}, "gan": {"unit": "images", "score": 2}},
        "quality": [{"name": "real held-out digits", "fid": 0.5}, {"name": "vae", "fid": 7.0}, {"name": "gan", "fid": 12.0}],
    }
    update = {
        "command": "python benchmarks/run.py --families gan", "date": "2026-11-24 22:30",
        "families": {"gan": {"unit": "images", "score": 3}},
        "quality": [{"name": "real held-out digits", "fid": 0.5}, {"name": "gan", "fid": 3.0}, {"name": "new", "fid": 1.0}],
    }
    merged = scoreboard.merge_results(previous, update)
    assert merged["families"] == {"vae": {"unit": "images", "score": 1}, "gan": {"unit": "images", "score": 3}}
    assert [(row["name"], row["fid"]) for row in merged["quality"]] == [
        ("real held-out digits", 0.5), ("vae", 7.0), ("gan", 3.0), ("new", 1.0)]  # in place, new rows last
    assert merged["command"] == previous["command"]
    assert merged["updates"] == [{"command": update["command"], "date": update["date"], "families": ["gan"]}]
    assert previous["families"]["gan"]["score"] == 2  # the earlier results are not changed in place
