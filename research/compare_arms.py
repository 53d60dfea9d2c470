"""Compare two arms of an experiment's results.parquet: mean difference, Welch's and the paired t-test.

Run: python research/compare_arms.py docs/experiment-long/results.parquet spark_weighted grpo_policy
     [--metric judge_accuracy_at_equal_steps ...] [--extra RERUNS.parquet ...]

--extra adds another table's rows of ARM as further draws of it (re-runs of a seed on another
thread count, say) to Welch's test only: the paired test keeps one row per seed from TABLE.

Three seeds give a t-test with two to four degrees of freedom: read the p-values as how far
inside the noise a difference is, not as a verdict. Paired means seed by seed (the arms of one
seed share its problems and judge set). scipy is a dependency of MLflow, so it is installed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

METRICS = ["judge_accuracy_at_equal_steps", "judge_auroc_at_equal_steps", "policy_accuracy_at_equal_steps",
           "judge_accuracy", "judge_auroc", "policy_accuracy"]


def compare(table: Path, arm: str, other: str, metrics: list[str], extra: list[Path] = ()) -> list[dict]:
    """One dict per metric: both means, the difference, Welch's and the paired t and p; `n` the draws
    of `arm` (its seeds in `table` plus its rows in the `extra` tables)."""
    import pyarrow.parquet as pq
    from scipy import stats

    rows = pq.read_table(table).to_pylist()
    by = {a: {r["seed"]: r for r in rows if r["arm"] == a} for a in (arm, other)}
    for a in (arm, other):
        if len(by[a]) < 2:
            raise SystemExit(f"error: {table}: arm {a!r} has {len(by[a])} seed(s); need 2 or more")
    more = [r for t in extra for r in pq.read_table(t).to_pylist() if r["arm"] == arm]
    shared = sorted(set(by[arm]) & set(by[other]))
    out = []
    for m in metrics:
        x = [by[arm][s][m] for s in sorted(by[arm])] + [r[m] for r in more]
        y = [by[other][s][m] for s in sorted(by[other])]
        welch = stats.ttest_ind(x, y, equal_var=False)
        paired = stats.ttest_rel([by[arm][s][m] for s in shared], [by[other][s][m] for s in shared]) \
            if len(shared) >= 2 else None
        mx, my = statistics.mean(x), statistics.mean(y)
        out.append({"metric": m, "n": len(x), "mean": mx, "other_mean": my, "difference": mx - my,
                    "welch_t": float(welch.statistic), "welch_p": float(welch.pvalue),
                    "paired_t": float(paired.statistic) if paired else None,
                    "paired_p": float(paired.pvalue) if paired else None})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", type=Path)
    p.add_argument("arm")
    p.add_argument("other")
    p.add_argument("--metric", action="append", help=f"repeat; default {', '.join(METRICS)}")
    p.add_argument("--extra", action="append", type=Path, default=[], help="repeat; more draws of ARM (Welch only)")
    a = p.parse_args(argv)
    for t in [a.table, *a.extra]:
        if not t.is_file():
            print(f"error: {t}: no such results table", file=sys.stderr)
            return 2
    print(f"{a.arm} minus {a.other} ({a.table}{''.join(', ' + str(t) for t in a.extra)}), percentage points")
    for r in compare(a.table, a.arm, a.other, a.metric or METRICS, a.extra):
        paired = "" if r["paired_t"] is None else f"; paired t {r['paired_t']:.2f}, p {r['paired_p']:.3f}"
        print(f"  {r['metric']} ({r['n']} draws): {100 * r['mean']:.1f} vs {100 * r['other_mean']:.1f}, "
              f"{100 * r['difference']:+.1f}; Welch t {r['welch_t']:.2f}, p {r['welch_p']:.3f}{paired}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
