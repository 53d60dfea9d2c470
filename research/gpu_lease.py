"""A GPU lease that comes back with a result (issue 28): prepared here, run there in a few calls.

A lent GPU machine has 15 minutes of device time, at most 64 MiB carried per call, no network,
and forgets everything about 30 s after a call ends. The real model (a 491 MB GGUF) travels in
pieces, one per call, so the lease is a chain of calls that each leave a result behind:

    here:   .venv/bin/python research/gpu_lease.py prepare        # pieces, wheels, manifest; prints the plan
    call 1: python3 research/gpu_lease.py first                   # carry .gpu/whl .gpu/manifest.json
    call i: python3 research/gpu_lease.py piece piece-NN          # carry .gpu/manifest.json .gpu/pieces/piece-NN
    last:   python3 research/gpu_lease.py last                    # carry .gpu/whl .gpu/manifest.json

`first` records the machine's boot id, installs the carried wheels, prints versions and disk,
runs a short smoke test of the real-model path on data/tiny-model (KV-cache rollouts, bf16
autocast, LoRA, one train step of each period through the stages) and starts the throughput
probe in the background (a randomly initialised Qwen2-0.5B-shaped model: decode tokens/s at
256 rows, train tokens/s, MFU against the card's bf16 dense peak). Each `piece` call checks
that it is on the same machine (boot id) and that the earlier pieces are still there, names in
one line what is missing or stale, and otherwise keeps its piece. `last` joins and checks the
model, imports it, makes the warm-up once and runs grpo_policy and one SPARK arm at equal
optimizer steps, evaluated only at those points, keeping one checkpoint each. Every call writes
what exists so far into $OUT, at most 8 files (lease.log, versions.json, smoke.json,
throughput.json, results.md, results.parquet, one adapters tarball per trained arm); when the
machine changed under the lease the call runs the probe itself so the call still returns a figure.

`plan` prints each call's command, carry list and the device time left below which to give the
machine back instead (the rest would not finish). At micro scale on this CPU (tests/test_gpu_lease.py):
`prepare --payload DIR_OR_FILE --piece-kib N`, then the calls with `--device cpu --micro`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_core.model.models import sha256_of  # noqa: E402  (standard library only: safe before the wheels)

MAX_FILES = 8
#: What each call costs in device time (seconds, estimates from the H100/H200 sessions so far:
#: a cold start 60-120 s, a 55 MiB carry about 10-20 s); the plan's skip points come from these.
FIRST_SECONDS, PIECE_SECONDS, LAST_SECONDS = 200, 25, 480
#: The returned files, in the order they are kept when more would exist than MAX_FILES.
RETURNED = ("lease.log", "versions.json", "smoke.json", "throughput.json", "results.md", "results.parquet")
WHEELS = ("pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
          "gguf==0.19.0", "math-verify==0.9.0", "latex2sympy2_extended==1.11.0", "antlr4-python3-runtime==4.13.2")
#: Qwen2.5-0.5B's shape (its config.json) and a micro one for this CPU.
QWEN05 = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
MICRO = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)


class LeaseError(Exception):
    """A one-line reason the lease cannot go on as planned (a piece missing, another machine)."""


def lease_dir() -> Path:
    """Where the lent machine keeps the lease between calls (`$SPARK_LEASE_DIR`, else /tmp/spark-lease)."""
    return Path(os.environ.get("SPARK_LEASE_DIR", "/tmp/spark-lease"))


def boot_id() -> str:
    """This machine's boot id (a fresh machine has a new one); `$SPARK_LEASE_BOOT_ID` stands in for tests."""
    fake = os.environ.get("SPARK_LEASE_BOOT_ID")
    return fake if fake else Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def log(msg: str) -> None:
    """Print `msg` and append it to the lease's merged log (the first returned file)."""
    lease = lease_dir()
    lease.mkdir(parents=True, exist_ok=True)
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(lease / "lease.log", "a") as f:
        f.write(line + "\n")


# --- here: prepare and plan ------------------------------------------------------------------------

def prepare(payload: Path, name: str, gpu: Path, piece_bytes: int, chat_template: str | None = None,
            wheels: bool = True) -> dict:
    """Split `payload` (a GGUF file, or a model directory, sent as a tar) into `gpu/pieces/piece-NN`
    and write `gpu/manifest.json` (name, kind, size and SHA-256 of the whole and of every piece);
    with `wheels`, download what the lent machine's image lacks into `gpu/whl`."""
    payload = Path(payload)
    shutil.rmtree(gpu / "pieces", ignore_errors=True)
    (gpu / "pieces").mkdir(parents=True)
    if payload.is_dir():
        whole, kind = gpu / "payload.tar", "tar"
        with tarfile.open(whole, "w") as t:
            t.add(payload, arcname=name)
    elif payload.is_file():
        whole, kind = payload, "gguf"
    else:
        raise LeaseError(f"{payload}: no such file or model directory")
    pieces = []
    with open(whole, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(piece_bytes), b"")):
            p = gpu / "pieces" / f"piece-{i:02d}"
            p.write_bytes(block)
            pieces.append({"name": p.name, "size": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    manifest = {"name": name, "kind": kind, "size": whole.stat().st_size, "sha256": sha256_of(whole),
                "chat_template": chat_template, "pieces": pieces, "made": time.strftime("%Y-%m-%d %H:%M")}
    if kind == "tar":
        whole.unlink()
    (gpu / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if wheels:
        (gpu / "whl").mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "-d", str(gpu / "whl"), *WHEELS], check=True)
    return manifest


def plan(manifest: dict, budget_s: int = 900, extra: str = "") -> list[dict]:
    """The calls of a lease, in order: command, carry list, and the device time left (s) below
    which the call is not worth starting (give the machine back: the earlier calls' files are in)."""
    gpu = ".gpu"
    calls = [{"command": f"python3 research/gpu_lease.py first{extra}", "carry": [f"{gpu}/whl", f"{gpu}/manifest.json"],
              "timeout_s": 120}]
    for p in manifest["pieces"]:
        calls.append({"command": f"python3 research/gpu_lease.py piece {p['name']}{extra}",
                      "carry": [f"{gpu}/manifest.json", f"{gpu}/pieces/{p['name']}"], "timeout_s": 60})
    calls.append({"command": f"python3 research/gpu_lease.py last{extra}", "carry": [f"{gpu}/whl", f"{gpu}/manifest.json"],
                  "timeout_s": 600})
    for i, c in enumerate(calls):
        if i == 0:
            c["skip_below_s"] = FIRST_SECONDS
        else:  # this call and every later one must fit, or the pieces sent are wasted
            pieces_left = len(calls) - 1 - i  # this one included
            c["skip_below_s"] = LAST_SECONDS + PIECE_SECONDS * pieces_left
    need = FIRST_SECONDS + PIECE_SECONDS * len(manifest["pieces"]) + LAST_SECONDS
    calls[0]["note"] = f"the whole lease needs about {need} s of the {budget_s} s"
    return calls


def print_plan(calls: list[dict]) -> None:
    print(f"# {len(calls)} calls, back to back (the machine is given back ~30 s after a call ends); {calls[0]['note']}")
    for i, c in enumerate(calls, 1):
        print(f"{i:>2}. run {c['command']!r}  carry {c['carry']}  timeout_s {c['timeout_s']}  "
              f"(skip to give_back when budget_left_s < {c['skip_below_s']})")
    print("A call that exits 3 printed why the lease cannot go on (another machine, a piece missing): "
          "its $OUT still has what exists; give the machine back.")


# --- there: the calls -------------------------------------------------------------------------------

def load_manifest(gpu: Path) -> dict:
    path = gpu / "manifest.json"
    if not path.is_file():
        raise LeaseError(f"{path}: not carried (add it to the call's carry list)")
    return json.loads(path.read_text())


def check_machine() -> None:
    """LeaseError unless this is the machine `first` ran on."""
    mark = lease_dir() / "boot_id"
    if not mark.is_file():
        raise LeaseError("no lease on this machine: `first` did not run here (a fresh machine: the earlier calls' pieces are gone)")
    was, now = mark.read_text().strip(), boot_id()
    if was != now:
        raise LeaseError(f"another machine: boot id {now[:8]}, call 1 ran on {was[:8]} (the earlier pieces and the probe are gone)")


def check_pieces(manifest: dict, upto: int | None = None) -> None:
    """LeaseError naming the first of the manifest's pieces before index `upto` (all: None) that is
    missing or not its size in the lease folder."""
    have = lease_dir() / "pieces"
    for p in manifest["pieces"][:upto]:
        f = have / p["name"]
        if not f.is_file():
            raise LeaseError(f"{p['name']} missing on this machine (sent earlier, now gone): the lease cannot join the model")
        if f.stat().st_size != p["size"]:
            raise LeaseError(f"{p['name']} is {f.stat().st_size:,} bytes on this machine, {p['size']:,} in the manifest")


def first(gpu: Path, out: Path, device: str, micro: bool) -> None:
    lease = lease_dir()
    shutil.rmtree(lease, ignore_errors=True)
    lease.mkdir(parents=True)
    (lease / "boot_id").write_text(boot_id())
    (lease / "started").write_text(str(time.time()))
    manifest = load_manifest(gpu)
    wheels = sorted((gpu / "whl").glob("*.whl")) if (gpu / "whl").is_dir() else []
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--target", str(lease / "site"), *map(str, wheels)], check=True)
    env_site(lease)
    versions = machine_versions()
    (lease / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    log(f"call 1 on {versions['device']} ({versions['boot_id'][:8]}): torch {versions['torch']}, transformers "
        f"{versions['transformers']}, peft {versions['peft']}, {versions['disk_free_gb']} GB free; "
        f"{len(manifest['pieces'])} pieces to come")
    run_logged([sys.executable, __file__, "smoke", "--device", device], "smoke", timeout=90)
    probe_cmd = [sys.executable, __file__, "probe", "--device", device, "--out", str(lease / "throughput.json")]
    with open(lease / "probe.out", "w") as f:  # detached: the call ends, the probe goes on
        subprocess.Popen(probe_cmd + (["--micro"] if micro else []), stdout=f, stderr=subprocess.STDOUT,
                         start_new_session=True, env=os.environ.copy())
    log("throughput probe started in the background")
    collect(out)


def piece(name: str, gpu: Path, out: Path, device: str, micro: bool) -> None:
    manifest = load_manifest(gpu)
    names = [p["name"] for p in manifest["pieces"]]
    if name not in names:
        raise LeaseError(f"{name}: not a piece of {manifest['name']} (the manifest has {names[0]}..{names[-1]})")
    i = names.index(name)
    carried = gpu / "pieces" / name
    if not carried.is_file():
        raise LeaseError(f"{carried}: not carried (add it to the call's carry list)")
    if sha256_of(carried) != manifest["pieces"][i]["sha256"]:
        raise LeaseError(f"{carried}: stale, its SHA-256 is not the manifest's (re-run `prepare` and send every piece again)")
    try:
        check_machine()
        check_pieces(manifest, i)
    except LeaseError as e:
        fallback(str(e), out, device, micro)
        raise
    (lease_dir() / "pieces").mkdir(exist_ok=True)
    shutil.copyfile(carried, lease_dir() / "pieces" / name)
    log(f"{name} kept ({i + 1} of {len(names)}); probe {'done' if (lease_dir() / 'throughput.json').is_file() else 'running'}")
    collect(out)


def last(gpu: Path, out: Path, device: str, micro: bool, config: Path, iterations: int, arm: str, seconds: int) -> None:
    lease = lease_dir()
    manifest = load_manifest(gpu)
    start = time.monotonic()
    env_site(lease)
    try:
        check_machine()
        check_pieces(manifest)
        model = join_and_import(manifest, lease)
    except LeaseError as e:
        fallback(str(e), out, device, micro)
        raise
    log(f"{manifest['name']} joined, checked and imported in {time.monotonic() - start:.0f} s")
    wait_probe(lease, 60)
    left = seconds - (time.monotonic() - start) - 30  # 30 s to collect
    cmd = [sys.executable, __file__, "experiment", "--config", str(config), "--model", str(model),
           "--iterations", str(iterations), "--arm", arm, "--device", device, "--root", str(lease / "runs"),
           "--out", str(lease / "experiment")]
    run_logged(cmd, "experiment", timeout=max(30, int(left)))
    collect(out)


def fallback(why: str, out: Path, device: str, micro: bool) -> None:
    """The lease cannot go on: say why, and return a throughput figure measured now if none was."""
    log(f"lease broken: {why}")
    if not (lease_dir() / "throughput.json").is_file():
        run_logged([sys.executable, __file__, "probe", "--device", device, "--out", str(lease_dir() / "throughput.json")]
                   + (["--micro"] if micro else []), "probe (fallback)", timeout=120)
    collect(out)


def run_logged(cmd: list[str], what: str, timeout: int) -> int:
    """Run a step in its own process with a time limit, its output into the merged log; its exit
    status (a failure or a timeout is logged, not raised: the call still returns its files)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = 124, (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    lines = [ln for ln in text.splitlines() if "Warning" not in ln and "warnings.warn" not in ln]
    with open(lease_dir() / "lease.log", "a") as f:
        f.write("\n".join(lines[-60:]) + "\n")
    log(f"{what}: exit {rc} in {time.monotonic() - t0:.0f} s" + (" (timed out)" if rc == 124 else ""))
    return rc


def wait_probe(lease: Path, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not (lease / "throughput.json").is_file() and time.monotonic() < end:
        time.sleep(1)


def env_site(lease: Path) -> None:
    """Put the carried wheels (installed by `first`) on this process's and its children's path."""
    site = lease / "site"
    if site.is_dir() and str(site) not in sys.path:
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def machine_versions() -> dict:
    import torch
    import transformers

    try:
        import peft
        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    cuda = torch.cuda.is_available()
    return {"boot_id": boot_id(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__, "peft": peft_version,
            "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
            "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
            "disk_free_gb": round(shutil.disk_usage(lease_dir()).free / 2**30, 1)}


def join_and_import(manifest: dict, lease: Path) -> Path:
    """Join the pieces, check the whole against the manifest, and make a model directory of it."""
    whole = lease / f"payload.{manifest['kind']}"
    h = hashlib.sha256()
    with open(whole, "wb") as f:
        for p in manifest["pieces"]:
            data = (lease / "pieces" / p["name"]).read_bytes()
            h.update(data)
            f.write(data)
    if h.hexdigest() != manifest["sha256"]:
        raise LeaseError(f"{whole}: the joined pieces' SHA-256 is not the manifest's (a piece changed on the way)")
    shutil.rmtree(lease / "pieces")  # the disk it takes twice
    models = lease / "models"
    if manifest["kind"] == "tar":
        with tarfile.open(whole) as t:
            t.extractall(models, filter="data")
    else:
        ct = manifest.get("chat_template")
        subprocess.run([sys.executable, "-m", "spark_cli.main", "model", "import", str(whole), "--out",
                        str(models / manifest["name"]), *(["--chat-template", ct] if ct else [])], check=True, cwd=ROOT)
    whole.unlink()
    return models / manifest["name"]


def collect(out: Path) -> list[Path]:
    """Copy what the lease has so far into `out`: the RETURNED files, then the trained arms' LoRA
    adapters as tarballs, at most MAX_FILES in all (the rest named in the log)."""
    lease = lease_dir()
    out.mkdir(parents=True, exist_ok=True)
    found = [lease / n for n in RETURNED[:4]] + [lease / "experiment" / n for n in RETURNED[4:]]
    found = [f for f in found if f.is_file()]
    adapters = sorted((lease / "runs").glob("*/checkpoints/iteration=*/adapter_config.json")) if (lease / "runs").is_dir() else []
    newest: dict[str, Path] = {}
    for a in adapters:  # the newest checkpoint of each arm (keep_last 1 leaves one)
        run = a.parents[2].name
        if run not in newest or _iteration(a.parent) > _iteration(newest[run]):
            newest[run] = a.parent
    for run, ckpt in sorted(newest.items()):
        tar = lease / f"adapters-{run}.tar.gz"
        if not tar.is_file() or tar.stat().st_mtime < ckpt.stat().st_mtime:
            with tarfile.open(tar, "w:gz") as t:
                t.add(ckpt, arcname=f"{run}/{ckpt.name}")
        found.append(tar)
    kept, dropped = found[:MAX_FILES], found[MAX_FILES:]
    if dropped:
        log(f"not returned (the {MAX_FILES}-file limit): {', '.join(f.name for f in dropped)}")
    for f in kept:
        shutil.copyfile(f, out / f.name)
    return [out / f.name for f in kept]


def _iteration(ckpt: Path) -> int:
    return int(ckpt.name.split("=")[1].split(".")[0])


# --- the steps, each run in its own process by the calls ------------------------------------------

def smoke(device: str) -> dict:
    """One SPARK iteration of data/tiny-model on `device` through the stages, the real-model path's
    options on: bf16 sampling with the KV cache, bf16 autocast, LoRA adapters, the format penalty."""
    import yaml

    from spark_core.config import load_config
    from spark_core.iteration import run_iteration
    from spark_core.stages.problems import prepare_problems

    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data |= {"model": {"path": str(ROOT / "data" / "tiny-model")},
             "rollout": {"device": device, "dtype": "bfloat16" if device == "cuda" else "bf16_if_native",
                         "batch_prompts": 8, "group_size": 4, "max_new_tokens": 24, "judge_max_new_tokens": 24},
             "train": {"mini_batch_size": 16, "micro_batch_size": 8, "bf16_autocast": True, "lora": {"rank": 4, "alpha": 8}},
             "spark": {"format_penalty": 0.5}, "eval": {"every": 1, "problems": 8, "judge_problems": 4, "tts": False},
             "checkpoints": {"keep_last": 1}}
    work = Path(tempfile.mkdtemp(prefix="lease-smoke-", dir=lease_dir()))
    (work / "c.yaml").write_text(yaml.safe_dump(data))
    cfg = load_config(work / "c.yaml")
    t0 = time.monotonic()
    prepare_problems(cfg, work / "run")
    doc = run_iteration(cfg, work / "run", 0)
    m = doc["metrics"]
    result = {"ok": True, "device": device, "seconds": round(time.monotonic() - t0, 1),
              **{k: m.get(k) for k in ("policy/rollout_tokens_per_s", "reward/rollout_tokens_per_s",
                                       "policy/train_tokens_per_s", "reward/train_tokens_per_s", "policy_accuracy")}}
    shutil.rmtree(work, ignore_errors=True)
    return result


def probe(device: str, micro: bool, rows: int | None = None) -> dict:
    """Decode and train throughput of a randomly initialised Qwen2-0.5B-shaped model (MICRO: a
    small one): greedy decode of 128 new tokens for `rows` rows (256) in bf16 with the KV cache;
    forward, backward and AdamW on 16 x 512 tokens, float32 weights under bf16 autocast (as the
    trainer runs). MFU = 6 N tokens/s over the card's bf16 dense peak (N: all parameters, the tied
    LM head counted once; attention's own FLOPs left out, so a lower bound)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import PEAKS

    shape = MICRO if micro else QWEN05
    rows = rows or (8 if micro else 256)
    new, prompt, batch, seq, steps = (16, 16, 4, 64, 2) if micro else (128, 64, 16, 512, 3)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape)).to(device)
    n = sum(p.numel() for p in model.parameters())
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    dec = model.to(torch.bfloat16).eval()
    ids = torch.randint(0, shape["vocab_size"], (rows, prompt), device=device)
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        dec.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # kernels and allocator warm
        sync()
        t0 = time.monotonic()
        dec.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
        sync()
    decode_s = time.monotonic() - t0
    model = dec.float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    x = torch.randint(0, shape["vocab_size"], (batch, seq), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    sync()
    t0 = time.monotonic()
    for _ in range(steps):
        step()
    sync()
    train_s = time.monotonic() - t0
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    train_tps = batch * seq * steps / train_s
    return {"device": name, "shape": "micro" if micro else "Qwen2-0.5B", "parameters": n,
            "decode": {"rows": rows, "new_tokens": new, "seconds": round(decode_s, 2),
                       "tokens_per_s": round(rows * new / decode_s, 1)},
            "train": {"batch": batch, "seq": seq, "steps": steps, "seconds": round(train_s, 2),
                      "tokens_per_s": round(train_tps, 1)},
            "peak_bf16_flops": peak, "train_mfu": round(6 * n * train_tps / peak, 4) if peak else None,
            "max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device == "cuda" else None}


def experiment(config: Path, model: Path, iterations: int, arm: str, device: str, root: Path, out: Path) -> None:
    """grpo_policy and one SPARK arm at equal optimizer steps on `model`, evaluated only where the
    steps are equal (grpo_policy runs 2N iterations, the SPARK arm N), one checkpoint kept each."""
    import yaml

    from spark_core.config import SparkConfig
    from spark_core.experiment import run_arm, write_results

    data = yaml.safe_load(Path(config).read_text())
    data.setdefault("model", {})["path"] = str(model)
    data.setdefault("rollout", {})["device"] = device
    data.setdefault("checkpoints", {})["keep_last"] = 1
    cfg = SparkConfig.model_validate(data)
    meta = {"name": "gpu-lease", "config": str(config), "iterations": iterations, "seeds": [cfg.seed],
            "arms": ["grpo_policy", arm], "runner": "research/gpu_lease.py"}
    rows, start = [], time.monotonic()
    for a in ("grpo_policy", arm):
        row, _, _ = run_arm(cfg, a, cfg.seed, iterations, root, every=iterations)
        rows.append(row)
        print(f"{a}: policy {row['policy_accuracy_at_equal_steps']}, judge {row['judge_accuracy_at_equal_steps']}, "
              f"steps {row['optimizer_steps_at_equal_steps']} ({row['seconds']:.0f} s)", flush=True)
        meta["seconds"] = time.monotonic() - start
        write_results(rows, out, meta)  # after each arm: a call cut short returns the first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("call", choices=("prepare", "plan", "first", "piece", "last", "smoke", "probe", "experiment"))
    ap.add_argument("name", nargs="?", help="piece: the piece this call carries (piece-NN)")
    ap.add_argument("--gpu", type=Path, default=ROOT / ".gpu", help="the carried folder (manifest, pieces, wheels)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--micro", action="store_true", help="the probe's micro shape (this CPU)")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="prepare: a registry name; experiment: a model dir")
    ap.add_argument("--payload", type=Path, help="prepare: a model directory or GGUF instead of the registry's cached GGUF")
    ap.add_argument("--piece-kib", type=int, default=55 * 1024)
    ap.add_argument("--no-wheels", action="store_true", help="prepare: skip the wheel download")
    ap.add_argument("--budget", type=int, default=900, help="plan: device seconds of the lease")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "qwen2.5-coder-0.5b-gpu-lease.yaml")
    ap.add_argument("--iterations", type=int, default=2, help="N: the SPARK arm runs N iterations, grpo_policy 2N")
    ap.add_argument("--arm", default="spark_expected")
    ap.add_argument("--seconds", type=int, default=560, help="last: the call's wall-time allowance")
    ap.add_argument("--root", type=Path)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    a = ap.parse_args(argv)
    extra = " --device cpu --micro" if a.micro else ""
    try:
        if a.call == "prepare":
            name, payload, ct = a.model, a.payload, None
            if payload is None:
                from spark_core.model.models import REGISTRY, cache_dir
                spec = REGISTRY[name]
                payload, ct = cache_dir() / name / spec.filename, spec.chat_template
                if not payload.is_file():
                    raise LeaseError(f"{payload}: not fetched; run .venv/bin/spark model fetch {name} first")
            m = prepare(payload, name if a.payload is None else payload.name, a.gpu, a.piece_kib * 1024, ct, not a.no_wheels)
            print(f"{m['name']}: {m['size']:,} bytes in {len(m['pieces'])} pieces under {a.gpu / 'pieces'}")
            print_plan(plan(m, a.budget, extra))
        elif a.call == "plan":
            print_plan(plan(load_manifest(a.gpu), a.budget, extra))
        elif a.call == "first":
            first(a.gpu, a.out, a.device, a.micro)
        elif a.call == "piece":
            if not a.name:
                raise LeaseError("piece: name the piece this call carries (piece-NN)")
            piece(a.name, a.gpu, a.out, a.device, a.micro)
        elif a.call == "last":
            last(a.gpu, a.out, a.device, a.micro, a.config, a.iterations, a.arm, a.seconds)
        elif a.call == "smoke":
            try:
                res = smoke(a.device)
            except Exception as e:  # the call goes on (the probe, the pieces); the file says what broke
                res = {"ok": False, "device": a.device, "error": f"{type(e).__name__}: {e}"[:500]}
            (lease_dir() / "smoke.json").write_text(json.dumps(res, indent=2) + "\n")
            print(json.dumps(res))
            return 0 if res["ok"] else 1
        elif a.call == "probe":
            res = probe(a.device, a.micro)
            tmp = a.out.with_name(a.out.name + ".tmp")  # whole or absent: collect never copies half a file
            tmp.write_text(json.dumps(res, indent=2) + "\n")
            tmp.rename(a.out)
            print(json.dumps(res))
        elif a.call == "experiment":
            experiment(a.config, Path(a.model), a.iterations, a.arm, a.device, a.root, a.out)
    except LeaseError as e:
        print(f"gpu_lease {a.call}: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
