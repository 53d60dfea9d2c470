"""The SPARK-versus-GRPO experiment without Prefect or MLflow, for a machine that has neither
(the lent GPU: torch and transformers only; issue 16 D). The same arms, seeds and results as
`spark experiment` (spark_core/experiment.py), written after every arm so a run cut short keeps
what it finished. Also joins and checks a model sent in pieces (`--join`).

Run: `python3 research/real_experiment.py -c configs/qwen2.5-coder-0.5b-gpu-experiment.yaml
--iterations 4 --arm base --arm grpo_policy --arm spark_safeguarded --arm spark_expected --out OUT`
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def join_pieces(pieces: Path, name: str, dest: Path) -> Path:
    """Concatenate `pieces/piece-*` (in name order) into `dest` and check it against the
    registry's size and SHA-256 for `name`; ValueError naming what differs."""
    from spark_core.model.models import REGISTRY

    spec = REGISTRY[name]
    parts = sorted(Path(pieces).glob("piece-*"))
    if not parts:
        raise ValueError(f"{pieces}: no piece-* files")
    h, size = hashlib.sha256(), 0
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as out:
        for p in parts:
            data = p.read_bytes()
            h.update(data)
            size += len(data)
            out.write(data)
    if size != spec.size or h.hexdigest() != spec.sha256:
        tmp.unlink()
        raise ValueError(f"{pieces}: {len(parts)} pieces make {size:,} bytes, sha256 {h.hexdigest()[:16]}...; "
                         f"{name} is {spec.size:,} bytes, {spec.sha256[:16]}... (a piece missing or cut short?)")
    tmp.rename(dest)
    return dest


def run(config: Path, iterations: int, seeds: list[int], arms: list[str], root: Path, out: Path) -> list[dict]:
    from spark_core.config import load_config
    from spark_core.experiment import coevolution_plot, run_arm, write_results

    cfg = load_config(config)
    meta = {"name": root.name, "config": str(config), "iterations": iterations, "seeds": seeds, "arms": arms,
            "runner": "research/real_experiment.py"}
    rows, start = [], time.monotonic()
    for seed in seeds:
        for arm in arms:
            row, _, _ = run_arm(cfg, arm, seed, iterations, root)
            rows.append(row)
            print(f"{arm} seed {seed}: policy {row['policy_accuracy']}, judge {row['judge_accuracy']}, "
                  f"AUROC {row['judge_auroc']}, steps {row['optimizer_steps']} ({row['seconds']:.0f}s)", flush=True)
            meta["seconds"] = time.monotonic() - start
            write_results(rows, out, meta)  # after every arm: a run cut short keeps what it finished
    coevolution_plot({a: [root / f"{a}-seed{s}" for s in seeds] for a in arms}, out / "coevolution.png")
    print((out / "results.md").read_text())
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", type=Path, default=ROOT / "configs" / "qwen2.5-coder-0.5b-gpu-experiment.yaml")
    ap.add_argument("--iterations", type=int, default=4, help="N (the single-period arms run 2N)")
    ap.add_argument("--seed", type=int, action="append", help="repeat; default 0")
    ap.add_argument("--arm", action="append", help="repeat; default base, grpo_policy, spark_safeguarded, spark_expected")
    ap.add_argument("--root", type=Path, default=ROOT / "data" / "experiments" / "real-gpu", help="the arms' run folders")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "experiment-real")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="SRC",
                    help="only fold the results tables of SRC folders into --out's (same arm and seed: SRC wins)")
    ap.add_argument("--join", nargs=3, metavar=("PIECES", "NAME", "DEST"), help="only join and check a model's pieces")
    a = ap.parse_args(argv)
    if a.join:
        try:
            print(join_pieces(Path(a.join[0]), a.join[1], Path(a.join[2])))
        except (ValueError, KeyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if a.merge:
        from spark_core.experiment import merge_results

        try:
            rows = merge_results(a.out, a.merge, f"merged {', '.join(map(str, a.merge))} with research/real_experiment.py --merge")
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{a.out}: {len(rows)} rows")
        return 0
    run(a.config, a.iterations, a.seed or [0], a.arm or ["base", "grpo_policy", "spark_safeguarded", "spark_expected"],
        a.root, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
