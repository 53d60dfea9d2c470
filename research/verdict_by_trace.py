"""Verdict by trace type: does the judge's verdict follow its own comparison line?

For Yes/No pointwise items of a reward benchmark (built from the first checkpoint's answers to
150 held-out problems), each checkpoint judges greedily; the response's last comparison line
(`46 vs 47: 4=4 6#7`) says the recomputed answer equals the candidate or differs. Printed: the
mean P(`Yes`) (from the teacher-forced verdict log-odds) per (trace says, candidate is) cell. A
judge that follows its trace has high P(Yes) when the trace says equal and low when it differs.

Run: `.venv/bin/python research/verdict_by_trace.py CHECKPOINT [CHECKPOINT ...]`
"""
import sys, math, collections
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from spark_core.model.checkpoint import load_checkpoint
from spark_core.config import load_config
from spark_core.evaluation.evaluate import build_judge_set, greedy, sample_groups, verdict_logodds
from spark_core.data.problems import generate_problems
from spark_core.model.rollout import HFEngine
import torch
def main(argv=None):
    torch.set_num_threads(2)
    cfg = load_config(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    _, held = generate_problems(cfg.problems, 0)
    base_model, tok = load_checkpoint((argv or sys.argv[1:])[0])
    items = [it for it in build_judge_set(sample_groups(HFEngine(base_model, tok, device="cpu"), held[:150], 4, 48, 17), 0)
             if it.kind == "pointwise" and it.wording == "yes_no"]
    for path in (argv or sys.argv[1:]):
        model, tok = load_checkpoint(path)
        e = HFEngine(model, tok, device="cpu")
        resp = greedy(e, [it.prompt for it in items], 96)
        odds = verdict_logodds(e, [it.prompt for it in items], resp, ["Yes"] * len(items), ["No"] * len(items))
        cells = collections.defaultdict(list)
        for it, r, o in zip(items, resp, odds):
            cmp = r.split(":")[-1] if ":" in r else ""
            says_equal = "#" not in cmp and "=" in cmp
            cells[(says_equal, it.candidate_correct)].append(o)
        print(path)
        for (eq, ok), os_ in sorted(cells.items()):
            p = sum(1 / (1 + math.exp(-o)) for o in os_) / len(os_)
            print(f"  trace says {'equal  ' if eq else 'differs'} candidate {'correct' if ok else 'wrong  '}: n={len(os_):3d}  mean P(Yes)={p:.2f}")


if __name__ == "__main__":
    main()
