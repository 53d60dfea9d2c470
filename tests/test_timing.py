"""spark_core/timing.py: exclusive time per component, split by whether a stage encloses it
(a fake clock: the accounting is tested, not the machine's speed)."""

from spark_core import timing


def test_exclusive_seconds_per_component_inside_and_outside_stages(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def tick(s):
        now[0] += s

    @timing.timed("manifests")
    def manifest():
        tick(1.0)

    @timing.timed("model load/save")
    def load():
        tick(4.0)
        manifest()  # nested: its second is the manifest's, not the load's

    @timing.timed("stage")
    def stage():
        tick(10.0)
        load()

    timing.reset()
    manifest()  # outside any stage
    stage()
    rows = {(r["component"], r["in_stage"]): (r["seconds"], r["calls"]) for r in timing.totals()}
    assert rows == {("manifests", False): (1.0, 1), ("stage", False): (10.0, 1),
                    ("model load/save", True): (4.0, 1), ("manifests", True): (1.0, 1)}
    assert sum(s for s, _ in rows.values()) == now[0]  # every second counted once
    timing.reset()
    assert timing.totals() == []


def test_an_exception_still_counts_and_unwinds(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    @timing.timed("parquet")
    def broken():
        now[0] += 2.0
        raise OSError("disk")

    timing.reset()
    try:
        broken()
    except OSError:
        pass
    assert timing.totals() == [dict(component="parquet", in_stage=False, seconds=2.0, calls=1)]
    assert timing._stack() == []
