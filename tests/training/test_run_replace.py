"""``--overwrite`` removes everything a previous run of the library wrote, the demo's search
example included, and nothing else (issue 19)."""

from __future__ import annotations

from bridgetower.training.run import previous_run, replace_previous_run


def test_replacing_a_demo_run_removes_its_search_example_and_keeps_the_users_files(tmp_path):
    run = tmp_path / "run"
    for name in ("summary.json", "search/explain.png", "search/search-1.png", "search/search-2.png",
                 "search/scenes/scene-00000.png", "search/index/manifest.json", "search/my-notes.txt",
                 "mine/index/keep.txt"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    assert "search/" in previous_run(run)
    removed = replace_previous_run(run)
    assert sorted(removed) == ["search/explain.png", "search/index/", "search/scenes/", "search/search-1.png",
                               "search/search-2.png", "summary.json"]
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert left == ["mine/index/keep.txt", "search/my-notes.txt"]
    (run / "search" / "my-notes.txt").unlink()
    (run / "summary.json").write_text("x")
    (run / "search" / "index").mkdir()
    replace_previous_run(run)
    assert not (run / "search").exists()  # the folder goes once it is empty
