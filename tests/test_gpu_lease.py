"""The GPU lease (research/gpu_lease.py) at micro scale on this CPU: the tiny model sent in pieces,
each call's checks, the fallback when the machine changes, and at most 8 returned files."""

import importlib.util
import json
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_lease", ROOT / "research" / "gpu_lease.py")
lease = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lease)

MICRO = ["--device", "cpu", "--micro"]


@pytest.fixture
def sent(tmp_path, monkeypatch):
    """The tiny model prepared in pieces of 1 MiB (5 of them), a lease folder and a machine 'A'."""
    monkeypatch.setenv("SPARK_LEASE_DIR", str(tmp_path / "lease"))
    monkeypatch.setenv("SPARK_LEASE_BOOT_ID", "machine-A")
    gpu = tmp_path / ".gpu"
    m = lease.prepare(ROOT / "data" / "tiny-model", "tiny-model", gpu, 1 << 20, wheels=False)
    return gpu, m


def _call(gpu, *args, out):
    return lease.main([*args, "--gpu", str(gpu), "--out", str(out), *MICRO])


def _pretend_first():
    """The lease folder as `first` leaves it on machine A (without the smoke test and probe)."""
    d = lease.lease_dir()
    (d / "pieces").mkdir(parents=True)
    (d / "boot_id").write_text("machine-A")
    return d


def test_the_plan_names_every_call_with_its_carry_and_skip_point(sent):
    gpu, m = sent
    assert len(m["pieces"]) == 5 and sum(p["size"] for p in m["pieces"]) == m["size"]
    calls = lease.plan(m, 900)
    assert [c["command"].split()[2] for c in calls] == ["first"] + ["piece"] * 5 + ["last"]
    assert calls[1]["carry"] == [".gpu/manifest.json", ".gpu/pieces/piece-00"]
    skips = [c["skip_below_s"] for c in calls[1:]]
    assert skips == sorted(skips, reverse=True) and skips[-1] == lease.LAST_SECONDS  # later calls need less


def test_a_piece_call_names_what_is_stale_missing_or_on_another_machine(sent, tmp_path, capsys, monkeypatch):
    gpu, m = sent
    d = _pretend_first()
    assert _call(gpu, "piece", "piece-00", out=tmp_path / "o0") == 0
    assert (d / "pieces" / "piece-00").stat().st_size == m["pieces"][0]["size"]
    # a piece carried from an older prepare
    stale = gpu / "pieces" / "piece-01"
    good = stale.read_bytes()
    stale.write_bytes(b"x" + good[1:])
    assert _call(gpu, "piece", "piece-01", out=tmp_path / "o1") == 3
    assert "piece-01: stale" in capsys.readouterr().err
    stale.write_bytes(good)
    # an earlier piece gone
    (d / "pieces" / "piece-00").unlink()
    assert _call(gpu, "piece", "piece-01", out=tmp_path / "o2") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("gpu_lease piece: piece-00 missing on this machine (sent earlier, now gone): "
                       "the lease cannot join the model")
    # the machine changed under the lease: the call says so and still returns a throughput figure
    (d / "pieces" / "piece-00").write_bytes((gpu / "pieces" / "piece-00").read_bytes())
    monkeypatch.setenv("SPARK_LEASE_BOOT_ID", "machine-B")
    assert _call(gpu, "piece", "piece-01", out=tmp_path / "o3") == 3
    assert "another machine" in capsys.readouterr().err
    got = json.loads((tmp_path / "o3" / "throughput.json").read_text())
    assert got["shape"] == "micro" and got["decode"]["tokens_per_s"] > 0 and got["train"]["tokens_per_s"] > 0
    assert "lease broken: another machine" in (tmp_path / "o3" / "lease.log").read_text()
    assert not (d / "pieces" / "piece-01").exists()  # nothing kept from a broken chain


def test_collect_returns_at_most_eight_files_and_names_the_rest(sent, tmp_path):
    d = lease.lease_dir()
    d.mkdir(parents=True)
    for n in lease.RETURNED[:4]:
        (d / n).write_text("{}")
    (d / "experiment").mkdir()
    for n in lease.RETURNED[4:]:
        (d / "experiment" / n).write_text("x")
    for arm in ("a", "b", "c"):
        for k in (0, 1):
            ck = d / "runs" / f"{arm}-seed0" / "checkpoints" / f"iteration={k}"
            ck.mkdir(parents=True)
            (ck / "adapter_config.json").write_text(json.dumps({"k": k}))
    got = lease.collect(tmp_path / "out")
    assert len(got) == 8 == len(list((tmp_path / "out").iterdir()))
    assert [p.name for p in got[-2:]] == ["adapters-a-seed0.tar.gz", "adapters-b-seed0.tar.gz"]
    with tarfile.open(tmp_path / "out" / "adapters-a-seed0.tar.gz") as t:
        assert t.getnames()[0] == "a-seed0/iteration=1"  # the newest checkpoint
    assert "not returned (the 8-file limit): adapters-c-seed0.tar.gz" in (d / "lease.log").read_text()


@pytest.mark.slow
def test_a_whole_lease_at_micro_scale_returns_results_and_adapters(sent, tmp_path):
    """first (smoke test on data/tiny-model, probe in the background), every piece, then last:
    join, check, unpack, grpo_policy and a SPARK arm with LoRA at equal steps."""
    gpu, m = sent
    assert _call(gpu, "first", out=tmp_path / "o-first") == 0
    smoke = json.loads((tmp_path / "o-first" / "smoke.json").read_text())
    assert smoke["ok"] and smoke["policy/train_tokens_per_s"] > 0, smoke
    for p in m["pieces"]:
        assert _call(gpu, "piece", p["name"], out=tmp_path / f"o-{p['name']}") == 0
        assert len(list((tmp_path / f"o-{p['name']}").iterdir())) <= 8
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg |= {"rollout": {"batch_prompts": 8, "group_size": 4, "max_new_tokens": 24, "judge_max_new_tokens": 24},
            "train": {"mini_batch_size": 16, "micro_batch_size": 8, "lora": {"rank": 4, "alpha": 8}},
            "eval": {"problems": 8, "judge_problems": 4, "tts": False}}
    (tmp_path / "lease.yaml").write_text(yaml.safe_dump(cfg))
    rc = _call(gpu, "last", "--config", str(tmp_path / "lease.yaml"), "--iterations", "1", out=tmp_path / "o-last")
    out = tmp_path / "o-last"
    log = (out / "lease.log").read_text()
    assert rc == 0 and "experiment: exit 0" in log, log[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert len(names) <= 8 and {"results.md", "results.parquet", "throughput.json", "smoke.json", "versions.json",
                                 "adapters-grpo_policy-seed0.tar.gz", "adapters-spark_expected-seed0.tar.gz"} <= set(names)
    import pyarrow.parquet as pq
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["arm"] for r in rows] == ["grpo_policy", "spark_expected"]
    assert rows[0]["optimizer_steps_at_equal_steps"] == rows[1]["optimizer_steps_at_equal_steps"] > 0
    assert all(r["policy_accuracy_at_equal_steps"] is not None for r in rows)
    runs = lease.lease_dir() / "runs"
    for arm in ("grpo_policy", "spark_expected"):  # keep_last 1
        assert len(list((runs / f"{arm}-seed0" / "checkpoints").glob("iteration=*"))) == 1
    assert not (lease.lease_dir() / "pieces").exists()  # joined, then freed
