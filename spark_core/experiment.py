"""The SPARK-versus-GRPO experiment: the same base model, problems, seeds and data order in every arm.

Arms (each a run directory under the experiment folder, made by the same stages as any run):

| arm | what trains |
|---|---|
| `base` | nothing: the base model evaluated |
| `grpo_policy` | GRPO policy periods only (`spark.mode: policy_only`) |
| `grpo_reward` | reward periods only, judge data from the base model's rollouts (`reward_only`) |
| `grpo_static` | policy rollouts and judge data from the base model's rollouts in one period (`static_mix`) |
| `spark` | SPARK with the authors' rules (`balance_labels: false`) |
| `spark_safeguarded` | SPARK with this project's safeguard: label balance (`balance_labels: true`) |
| `spark_weighted` | `spark_safeguarded` with Tango's label weighting (`label_weighting: inv_sqrt_ema`) |
| `spark_expected` | `spark_safeguarded` with expected judge rewards (`judge_reward: expected`) |

The last two run only when asked for (`--arm`); the default is the first six.

SPARK takes two optimizer steps per iteration (a policy and a reward period), the single-period
arms one: `grpo_policy` and `grpo_reward` run 2N iterations, so they are compared both at N
iterations and at 2N (equal optimizer steps). Results come from each run's `evals` table.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import pyarrow as pa

from spark_core.config import SparkConfig
from spark_core.data.store import atomic_write_bytes, atomic_write_parquet, read_manifest, read_table, write_manifest

ARMS = ("base", "grpo_policy", "grpo_reward", "grpo_static", "spark", "spark_safeguarded", "spark_weighted",
        "spark_expected")
DEFAULT_ARMS = ARMS[:6]
_MODE = {"grpo_policy": ("policy_only", False), "grpo_reward": ("reward_only", True), "grpo_static": ("static_mix", True),
         "spark": ("spark", False), "spark_safeguarded": ("spark", True), "spark_weighted": ("spark", True),
         "spark_expected": ("spark", True)}
#: Judge-reward options an arm sets on top of its mode (spark_core/maths/judge_reward.py).
_OPTIONS = {"spark_weighted": {"label_weighting": "inv_sqrt_ema"}, "spark_expected": {"judge_reward": "expected"}}
DOUBLED = ("grpo_policy", "grpo_reward")  # one period per iteration: run twice as many iterations
METRICS = ("policy_accuracy", "judge_accuracy", "judge_auroc", "tts_accuracy", "reflection_accuracy",
           "verdict_share_yes", "verdict_share_a_pairwise")


def arm_iterations(arm: str, n: int) -> int:
    return 0 if arm == "base" else 2 * n if arm in DOUBLED else n


def eval_every(n: int) -> int:
    """An evaluation period that divides N (so iterations N-1 and 2N-1 are evaluated), about N/4."""
    return next(d for d in range(max(1, n // 4), 0, -1) if n % d == 0)


def arm_config(base: SparkConfig, arm: str, seed: int, n: int, every: int | None = None) -> SparkConfig:
    """The config of one arm and seed: the base config with the arm's mode, seed and evaluation
    period (`every`, else `eval_every(n)`; N evaluates only at the equal-step points)."""
    data = base.resolved()
    data["seed"] = seed
    mode, balanced = _MODE.get(arm, ("spark", False))
    data["spark"] |= {"mode": mode, "balance_labels": balanced} | _OPTIONS.get(arm, {})
    data["eval"] |= {"every": every or eval_every(n)}
    return SparkConfig.model_validate(data)


def _evals_at(run_dir: Path, k: int) -> dict:
    t = read_table(run_dir, "evals").to_pylist()
    return {r["metric"]: r["value"] for r in t if r["iteration"] == k}


def _steps_through(run_dir: Path, k: int) -> int:
    return sum(1 for r in read_table(run_dir, "updates").to_pylist() if r["iteration"] <= k and not r["skipped"])


def _pick(m: dict) -> dict:
    """The result columns (METRICS) from evaluation metrics; `tts_accuracy` is self-reflection's."""
    return {k: m.get("tts_reflect_accuracy" if k == "tts_accuracy" else k) for k in METRICS}


def run_base(cfg: SparkConfig, run_dir: Path) -> dict:
    """Evaluate the base model on the run's held-out data (once; kept in a manifest)."""
    from spark_core.rundir import base_model, eval_hash, open_engine, problems_of
    from spark_core.stages.evaluate import evaluate_checkpoint, judge_set_stage
    from spark_core.stages.problems import prepare_problems

    prepare_problems(cfg, run_dir)
    doc = read_manifest(run_dir, "base_eval", None)
    if doc and doc.get("config_hash") == eval_hash(cfg):
        return doc["metrics"]
    start = time.monotonic()
    items = judge_set_stage(cfg, run_dir)
    with open_engine(cfg, base_model(cfg), cfg.seed) as engine:
        metrics, _ = evaluate_checkpoint(cfg, engine, problems_of(run_dir, "held_out"), items)
    write_manifest(run_dir, "base_eval", None, eval_hash(cfg), outputs={}, rows={}, seconds=time.monotonic() - start,
                   extra={"metrics": metrics})
    return metrics


def run_arm(base_cfg: SparkConfig, arm: str, seed: int, n: int, root: Path,
            every: int | None = None) -> tuple[dict, Path, SparkConfig]:
    """Run (or finish) one arm for one seed (`every`: its evaluation period, see `arm_config`);
    returns its result row, run directory and config."""
    from spark_core.iteration import run_iteration
    from spark_core.rundir import claim_run, completed_iterations
    from spark_core.runlock import run_lock
    from spark_core.stages.problems import prepare_problems

    cfg = arm_config(base_cfg, arm, seed, n, every)
    run_dir = Path(root) / f"{arm}-seed{seed}"
    start = time.monotonic()
    with run_lock(run_dir):
        claim_run(cfg, run_dir)
        if arm == "base":
            m = run_base(cfg, run_dir)
            row = {"arm": arm, "seed": seed, "iterations": 0, "optimizer_steps": 0, **_pick(m)}
            row |= {f"{k}_at_equal_steps": v for k, v in _pick(m).items()} | {"optimizer_steps_at_equal_steps": 0}
        else:
            prepare_problems(cfg, run_dir)
            total = arm_iterations(arm, n)
            for k in range(completed_iterations(run_dir, cfg), total):
                run_iteration(cfg, run_dir, k)
            row = {"arm": arm, "seed": seed, "iterations": n, "optimizer_steps": _steps_through(run_dir, n - 1),
                   **_pick(_evals_at(run_dir, n - 1))}
            row |= {f"{k}_at_equal_steps": v for k, v in _pick(_evals_at(run_dir, total - 1)).items()}
            row["optimizer_steps_at_equal_steps"] = _steps_through(run_dir, total - 1)
        row["seconds"] = _add_arm_seconds(run_dir, time.monotonic() - start)
    return row, run_dir, cfg


def _add_arm_seconds(run_dir: Path, seconds: float) -> float:
    """The arm's wall time summed over every call that finished it (a killed call records
    nothing): a resume of a finished arm, to rebuild the report, adds its second or so instead
    of replacing the first run's time."""
    path = Path(run_dir) / "arm_seconds.json"
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    atomic_write_bytes(path, (json.dumps({"seconds": total}) + "\n").encode(), run_dir)
    return total


# --------------------------------------------------------------------------- reporting

RESULT_SCHEMA = pa.schema(
    [("arm", pa.string()), ("seed", pa.int64()), ("iterations", pa.int64()), ("optimizer_steps", pa.int64())]
    + [(m, pa.float64()) for m in METRICS]
    + [("optimizer_steps_at_equal_steps", pa.int64())]
    + [(f"{m}_at_equal_steps", pa.float64()) for m in METRICS]
    + [("seconds", pa.float64())]
)


def write_results(rows: list[dict], out_dir: Path, meta: dict) -> dict[str, Path]:
    """results.parquet (one row per arm and seed), results.md (mean and spread), coevolution.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in RESULT_SCHEMA} for r in rows], schema=RESULT_SCHEMA)
    atomic_write_parquet(table, out_dir / "results.parquet")
    atomic_write_bytes(out_dir / "results.md", markdown(rows, meta).encode())
    atomic_write_bytes(out_dir / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return {"parquet": out_dir / "results.parquet", "markdown": out_dir / "results.md"}


def merge_results(out_dir: Path, sources: list[Path], note: str) -> list[dict]:
    """Fold the result rows of `sources` (folders with a results.parquet, e.g. one-thread streams
    run side by side) into `out_dir`'s table: a (arm, seed) row from a source replaces the same
    pair already there, later sources win; meta's seeds per arm recomputed, `note` appended to its
    note. Rewrites results.parquet, results.md and meta.json; coevolution.png is left as it was
    (it needs every run folder); meta's seconds add the sources'. Returns the merged rows, in (arm order, seed) order."""
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "meta.json").read_text())
    merged = {(r["arm"], r["seed"]): r for r in pq.read_table(out_dir / "results.parquet").to_pylist()}
    for src in sources:
        path = Path(src) / "results.parquet"
        if not path.is_file():
            raise ValueError(f"{path}: no results table to merge")
        merged |= {(r["arm"], r["seed"]): r for r in pq.read_table(path).to_pylist()}
        src_meta = Path(src) / "meta.json"
        if src_meta.is_file():  # wall time of runs made side by side: summed, as if one after another
            meta["seconds"] = meta.get("seconds", 0.0) + json.loads(src_meta.read_text()).get("seconds", 0.0)
    order = {a: i for i, a in enumerate(ARMS)}
    rows = sorted(merged.values(), key=lambda r: (order.get(r["arm"], len(order)), r["seed"]))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    meta |= {"arms": arms, "seeds": sorted({r["seed"] for r in rows}),
             "seeds_per_arm": {a: sorted(r["seed"] for r in rows if r["arm"] == a) for a in arms},
             "note": f"{meta.get('note', '')}; {note}".lstrip("; ")}
    write_results(rows, out_dir, meta)
    return rows


def _mean_sd(values: list) -> str:
    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{100 * xs[0]:.1f}"
    return f"{100 * statistics.mean(xs):.1f} ± {100 * statistics.stdev(xs):.1f}"


def markdown(rows: list[dict], meta: dict) -> str:
    """Table-2-like summary: per arm, mean ± sd over seeds, in percent."""
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Arms at N = {meta.get('iterations')} iterations, seeds {seeds} (mean ± sd over seeds, percent). "
             "Policy: greedy held-out accuracy; judge: accuracy on the balanced held-out judge set "
             "(a constant verdict scores 50); AUROC of the verdict log-odds; TTS: with test-time self-reflection.", "",
             "| arm | steps | policy | judge | mean | judge AUROC | policy + TTS | Yes share | at equal steps: steps | policy | judge |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in [a for a in ARMS if any(r["arm"] == a for r in rows)]:
        rs = [r for r in rows if r["arm"] == arm]
        both = [None if r["policy_accuracy"] is None or r["judge_accuracy"] is None
                else (r["policy_accuracy"] + r["judge_accuracy"]) / 2 for r in rs]
        steps = statistics.mean(r["optimizer_steps"] for r in rs)
        esteps = statistics.mean(r["optimizer_steps_at_equal_steps"] for r in rs)
        lines.append(
            f"| {arm} | {steps:.0f} | {_mean_sd([r['policy_accuracy'] for r in rs])} | {_mean_sd([r['judge_accuracy'] for r in rs])} "
            f"| {_mean_sd(both)} | {_mean_sd([r['judge_auroc'] for r in rs])} | {_mean_sd([r['tts_accuracy'] for r in rs])} "
            f"| {_mean_sd([r['verdict_share_yes'] for r in rs])} | {esteps:.0f} "
            f"| {_mean_sd([r['policy_accuracy_at_equal_steps'] for r in rs])} | {_mean_sd([r['judge_accuracy_at_equal_steps'] for r in rs])} |"
        )
    return "\n".join(lines) + "\n"


def mean_curve(
    points: list[tuple[int, int, float | None, float | None]],
) -> list[tuple[float, float | None, float | None]]:
    """Seeds' evaluations averaged per iteration: (iteration, steps, policy, judge) for every
    seed -> (mean steps, mean policy, mean judge) per iteration, in iteration order.

    By iteration, not by step count: seeds whose reward periods took different numbers of steps
    would otherwise each make their own point and the line would zig-zag between seeds.
    A metric missing from every seed at an iteration is None.
    """
    by_k: dict[int, list[tuple[int, float | None, float | None]]] = {}
    for k, steps, pol, judge in points:
        by_k.setdefault(k, []).append((steps, pol, judge))

    def mean(vals: list[float | None]) -> float | None:
        present = [v for v in vals if v is not None]
        return statistics.mean(present) if present else None

    return [(statistics.mean(v[0] for v in rows), mean([v[1] for v in rows]), mean([v[2] for v in rows]))
            for _, rows in sorted(by_k.items())]


def coevolution_plot(runs: dict[str, list[Path]], out: Path) -> Path:
    """Held-out policy and judge accuracy against optimizer steps, one line per arm (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for arm, dirs in runs.items():
        if arm == "base":
            continue
        points = []
        for d in dirs:
            evals = read_table(d, "evals").to_pylist()
            for k in sorted({r["iteration"] for r in evals}):
                m = {r["metric"]: r["value"] for r in evals if r["iteration"] == k}
                points.append((k, _steps_through(d, k), m.get("policy_accuracy"), m.get("judge_accuracy")))
        curve = mean_curve(points)
        for ax, i in zip(axes, (1, 2)):
            xy = [(c[0], c[i]) for c in curve if c[i] is not None]
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=arm)
    base = [d for d in runs.get("base", [])]
    for ax, key, title in zip(axes, ("policy_accuracy", "judge_accuracy"), ("policy accuracy (greedy, held out)", "judge accuracy (held-out judge set)")):
        vals = [read_manifest(d, "base_eval", None)["metrics"].get(key) for d in base if read_manifest(d, "base_eval", None)]
        if vals:
            ax.axhline(statistics.mean(vals), color="gray", linestyle=":", label="base")
        ax.set_title(title)
        ax.set_xlabel("optimizer steps")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[1].axhline(0.5, color="black", linewidth=0.5)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
