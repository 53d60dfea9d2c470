"""Why the reward period cannot teach the tiny judge: its recomputation repeats its own errors.

Samples the shipped model's answers to 150 held-out problems (T=1, 4 each), keeps the wrong
ones, and asks the model to judge them (compact Yes/No template, T=1, 4 samples). Reports how
often the judge's own recomputed result in its trace equals the wrong candidate (then the digit
comparison says "all equal" while the label is No), against near-miss wrong answers made up
by `bootstrap.near_miss`. Run: `.venv/bin/python research/judge_trace_correlation.py`.
"""
import re, random
from spark_core.model.checkpoint import load_checkpoint
from spark_core.config import SparkConfig
from spark_core.data.problems import generate_problems
from spark_core.model.rollout import HFEngine, SamplingSpec
from spark_core.verify import verify_response
from spark_core.judge.templates import templates
def main(argv=None):
    cfg = SparkConfig()
    model, tok = load_checkpoint("data/tiny-model"); eng = HFEngine(model, tok)
    train, held = generate_problems(cfg.problems, 0)
    probs = held[:150]
    groups = eng.generate([p.question for p in probs], SamplingSpec(group_size=4, max_new_tokens=48, seed=1))
    wrong = []
    for p, g in zip(probs, groups):
        for s in g:
            v = verify_response(s.text, p.answer)
            if v.correct is False and v.extracted and re.fullmatch(r"-?\d+", v.extracted):
                wrong.append((p, v.extracted))
    print("wrong own answers", len(wrong))
    tpl = templates("compact", "pointwise", "yes_no")[0]
    out = eng.generate([tpl.render(question=p.question, candidate=c) for p, c in wrong], SamplingSpec(group_size=4, max_new_tokens=96, seed=2))
    same = right_trace = 0; n = 0
    for (p, c), g in zip(wrong, out):
        for s in g:
            m = re.search(r"=(-?\d+)\. (-?\d+) vs", s.text)
            if not m: continue
            n += 1; trace = m.group(1)
            same += trace == c; right_trace += trace == p.answer
    print(f"judge traces on own wrong answers: {n}; trace recomputes the same wrong value {same/n:.2f}; trace gets it right {right_trace/n:.2f}")
    # compare with near-miss (synthetic) wrong answers
    from spark_core.model.bootstrap import near_miss
    rng = random.Random(0)
    syn = [(p, str(near_miss(int(p.answer), rng))) for p in probs]
    out = eng.generate([tpl.render(question=p.question, candidate=c) for p, c in syn], SamplingSpec(group_size=4, max_new_tokens=96, seed=3))
    same = right_trace = n = 0
    for (p, c), g in zip(syn, out):
        for s in g:
            m = re.search(r"=(-?\d+)\. (-?\d+) vs", s.text)
            if not m: continue
            n += 1; same += m.group(1) == c; right_trace += m.group(1) == p.answer
    print(f"judge traces on near-miss answers: {n}; trace equals the candidate {same/n:.2f}; trace right {right_trace/n:.2f}")


if __name__ == "__main__":
    main()
