"""Evaluation on held-out data only: policy accuracy, the judge on a labelled reward benchmark,
reflection, and test-time self-reflection.

- **Policy**: greedy accuracy, and mean@k / pass@k over k samples at T=1.
- **Reward benchmark** (`build_judge_set`): built once from a *frozen* checkpoint's sampled
  answers to held-out problems, never trained on. Balanced: as many correct as incorrect
  candidates in pointwise items (Yes/No and A/B wordings alternating), the correct answer in
  slot A and B equally often in pairwise items; reflection items show a wrong answer.
- **Judge metrics** (`judge_report`, pure): accuracy per kind and wording, parse rate, the share
  of each verdict (a constant verdict scores exactly 50% on the balanced set and shows as a
  share of 1.0), precision/recall of "correct" on pointwise items, and the AUROC of the
  verdict's log-odds (Yes vs No, A vs B, teacher-forced after `\\boxed{`), which shows
  separation a greedy verdict hides.
- **Test-time scaling** (../shared/SPARK.md): `tts_reflect` (judge own greedy answer; if not
  `Yes`, re-solve shown the rejected answer; up to 2 rounds) and `tts_best_of_n` (sample N,
  keep answers the model's own judge accepts, majority among them). Both count the extra
  generations they cost.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from spark_core.model.logits import blocked_matches, gathered_stats, hidden_states, use_blocks
from spark_core.data.problems import Problem
from spark_core.data.prompts import solve_prompt
from spark_core.judge.recycle import Rollout
from spark_core.model.rollout import Engine, SamplingSpec
from spark_core.judge.templates import candidate_text, pointwise_label, templates
from spark_core.verify import extract_answer, normalize_label, verify_response

# --------------------------------------------------------------------------- the reward benchmark


@dataclass(frozen=True)
class JudgeItem:
    """One labelled judge (or reflection) prompt of the reward benchmark."""

    item_id: str
    kind: str  # pointwise | pairwise | reflection
    wording: str  # yes_no | a_b | pair | says_wrong | asks_check
    prompt: str
    label: str  # Yes/No/A/B, or the reference answer (reflection)
    positive: str  # the verdict meaning "correct" (pointwise) or "A" (pairwise); "" for reflection
    negative: str
    candidate_correct: bool | None  # pointwise: is the shown candidate correct
    source_prompt_id: str


def build_judge_set(groups: Sequence[Sequence[Rollout]], seed: int, template_set: str = "compact",
                    judge_input: str = "answer") -> list[JudgeItem]:
    """A balanced labelled set from verified groups of sampled answers (one group per problem).

    Per problem at most one correct and one wrong candidate enter the pointwise pools, which are
    cut to equal size; pairwise items come from problems with both; reflection items from
    problems with a wrong answer. Wordings and slots alternate, templates are drawn by `seed`.
    """
    rng = random.Random(f"{seed}|judge-set")
    right, wrong, pairs, reflect = [], [], [], []
    for g in groups:
        ok = [r for r in g if r.correct]
        bad = [r for r in g if not r.correct and (r.extracted is not None or judge_input != "answer")]
        if ok:
            right.append(ok[0])
        if bad:
            wrong.append(bad[0])
            reflect.append(bad[0])
        if ok and bad:
            pairs.append((ok[0], bad[0]))
    n = min(len(right), len(wrong))
    items: list[JudgeItem] = []
    for i, r in enumerate(right[:n] + wrong[:n]):
        wording = ("yes_no", "a_b")[(i % n) % 2] if n else "yes_no"
        tpl = rng.choice(templates(template_set, "pointwise", wording))
        pos, neg = pointwise_label(True, wording), pointwise_label(False, wording)
        items.append(JudgeItem(
            f"pointwise/{r.prompt_id}/{r.sample_index}", "pointwise", wording,
            tpl.render(question=r.question, candidate=candidate_text(r.response, r.extracted, judge_input)),
            pos if r.correct else neg, pos, neg, r.correct, r.prompt_id,
        ))
    for i, (good, bad) in enumerate(pairs):
        slot = "AB"[i % 2]
        a, b = (good, bad) if slot == "A" else (bad, good)
        tpl = rng.choice(templates(template_set, "pairwise"))
        items.append(JudgeItem(
            f"pairwise/{good.prompt_id}/{a.sample_index}-{b.sample_index}", "pairwise", "pair",
            tpl.render(question=good.question, a=candidate_text(a.response, a.extracted, judge_input),
                       b=candidate_text(b.response, b.extracted, judge_input)),
            slot, "A", "B", None, good.prompt_id,
        ))
    for r in reflect:
        tpl = rng.choice(templates(template_set, "reflection", "says_wrong"))
        items.append(JudgeItem(
            f"reflection/{r.prompt_id}/{r.sample_index}", "reflection", "says_wrong",
            tpl.render(question=r.question, response=r.extracted if r.extracted is not None else r.response),
            r.reference, "", "", False, r.prompt_id,
        ))
    return items


def sample_groups(engine: Engine, problems: Sequence[Problem], samples: int, max_new_tokens: int, seed: int,
                  solve: str = "bare") -> list[list[Rollout]]:
    """Verified groups of `samples` answers at T=1 per problem (what the judge set is built from);
    `solve`: the solve prompt (a `prompts.solve` preset or template)."""
    groups = engine.generate([solve_prompt(solve, p.question) for p in problems],
                             SamplingSpec(samples, 1.0, 1.0, max_new_tokens, seed=seed))
    return [verified_group(p.id, p.question, p.answer, g) for p, g in zip(problems, groups)]


def verified_group(prompt_id: str, question: str, reference: str, samples) -> list[Rollout]:
    """One problem's sampled answers, verified against its reference, as recycling Rollouts."""
    rows = []
    for s in samples:
        v = verify_response(s.text, reference)
        rows.append(Rollout(prompt_id, question, reference, s.sample_index, s.text, v.extracted, bool(v.correct)))
    return rows


# --------------------------------------------------------------------------- metrics (pure)


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve (ties count one half); None without both classes.

    Equals the probability that a random positive scores above a random negative.
    """
    pos = [s for s, y in zip(scores, positive) if y]
    neg = [s for s, y in zip(scores, positive) if not y]
    if not pos or not neg:
        return None
    ranked = sorted((s, i) for i, s in enumerate(scores))
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for t in range(i, j + 1):
            ranks[ranked[t][1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, positive) if y)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def verdict_of(response: str) -> str | None:
    """The verdict a judge response gives: the last `\\boxed{}`'s content, normalised (None: no box)."""
    found = extract_answer(response, "boxed").answer
    return normalize_label(found) if found is not None else None


def _share(xs: list[bool]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def judge_report(items: Sequence[JudgeItem], verdicts: Sequence[str | None],
                 scores: Sequence[float | None] | None = None) -> dict[str, float | None]:
    """Judge metrics over pointwise and pairwise items (reflection items are ignored here).

    `verdicts` are normalised (see `verdict_of`); `scores` the log-odds of `positive` over
    `negative` (None where not computed). Accuracy counts an unparsable verdict as wrong.
    """
    m: dict[str, float | None] = {}
    judged = [(it, v, (scores[i] if scores else None)) for i, (it, v) in enumerate(zip(items, verdicts))
              if it.kind in ("pointwise", "pairwise")]
    right = lambda it, v: v == normalize_label(it.label)  # noqa: E731
    groups = {
        "judge": judged,
        "pointwise": [x for x in judged if x[0].kind == "pointwise"],
        "pointwise_yes_no": [x for x in judged if x[0].wording == "yes_no"],
        "pointwise_a_b": [x for x in judged if x[0].wording == "a_b"],
        "pairwise": [x for x in judged if x[0].kind == "pairwise"],
    }
    parsed = lambda it, v: v in (normalize_label(it.positive), normalize_label(it.negative))  # noqa: E731
    for name, xs in groups.items():
        m[f"{name}_accuracy"] = _share([right(it, v) for it, v, _ in xs])
        m[f"{name}_n"] = float(len(xs))
        # A response with no parsable verdict is a format failure, not a wrong judgment: report
        # the parse rate and the accuracy over parsed items beside the accuracy over all.
        m[f"{name}_parse_rate"] = _share([parsed(it, v) for it, v, _ in xs])
        m[f"{name}_accuracy_parsed"] = _share([right(it, v) for it, v, _ in xs if parsed(it, v)])
    m["judge_parse_rate"] = _share([parsed(it, v) for it, v, _ in judged])
    m["verdict_share_yes"] = _share([v == "yes" for _, v, _ in groups["pointwise_yes_no"]])
    m["verdict_share_a_pointwise"] = _share([v == "a" for _, v, _ in groups["pointwise_a_b"]])
    m["verdict_share_a_pairwise"] = _share([v == "a" for _, v, _ in groups["pairwise"]])
    points = groups["pointwise"]
    said_correct = [v == normalize_label(it.positive) for it, v, _ in points]
    truly = [bool(it.candidate_correct) for it, _, _ in points]
    tp = sum(a and b for a, b in zip(said_correct, truly))
    m["precision_correct"] = tp / sum(said_correct) if any(said_correct) else None
    m["recall_correct"] = tp / sum(truly) if any(truly) else None
    for name in ("judge", "pointwise", "pairwise"):
        xs = [(s, it) for it, _, s in groups[name] if s is not None]
        m[f"{name}_auroc"] = auroc([s for s, _ in xs], [
            bool(it.candidate_correct) if it.kind == "pointwise" else it.label == "A" for _, it in xs]) if xs else None
    return m


# --------------------------------------------------------------------------- running a model on them


def greedy(engine: Engine, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    if not prompts:
        return []
    return [g[0].text for g in engine.generate(list(prompts), SamplingSpec(1, 0.0, 1.0, max_new_tokens, seed=0))]


def _verdict_prefix(response: str) -> str:
    """The response up to where the verdict goes: through its last `\\boxed{`, else with one appended."""
    at = response.rfind("\\boxed{")
    return response[: at + len("\\boxed{")] if at >= 0 else response + " \\boxed{"


@torch.no_grad()
def verdict_logodds(engine, prompts: Sequence[str], responses: Sequence[str], positives: Sequence[str],
                    negatives: Sequence[str], batch: int = 64) -> list[float | None]:
    """log P(positive + "}") - log P(negative + "}") right after the response's `\\boxed{`,
    teacher-forced under the engine's model (Hugging Face engines; None for others)."""
    model, tok = getattr(engine, "model", None), getattr(engine, "tokenizer", None)
    if model is None or tok is None or not hasattr(engine, "encode"):
        return [None] * len(prompts)
    prompt_ids = engine.encode(list(prompts))
    seqs, spans = [], []
    for pids, resp, pos, neg in zip(prompt_ids, responses, positives, negatives):
        prefix = pids + tok(_verdict_prefix(resp), add_special_tokens=False)["input_ids"]
        for label in (pos, neg):
            cont = tok(label + "}", add_special_tokens=False)["input_ids"]
            seqs.append(prefix + cont)
            spans.append((len(prefix), len(cont)))
    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None) or 10**9
    logps: list[float | None] = []
    # Only the label's few positions are needed: their log-softmax from the hidden states
    # (spark_core/model/logits.py), never a full (batch, width, vocabulary) float32 tensor; decided
    # once per call, with the same check of the head against the model's logits as the trainer's.
    blocked = use_blocks(model, "auto") and blocked_matches(model)
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(seqs), batch):
            chunk = [s[-limit:] for s in seqs[b : b + batch]]
            width = max(map(len, chunk))
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in chunk], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=device)
            out = hidden_states(model, {"input_ids": ids, "attention_mask": mask}) if blocked else \
                model(input_ids=ids, attention_mask=mask).logits
            for r, (s, (start, n)) in enumerate(zip(chunk, spans[b : b + batch])):
                start -= len(seqs[b + r]) - len(s)  # the part cut to fit the context
                if start < 1:
                    logps.append(None)
                    continue
                tgt = torch.tensor(s[start : start + n], device=device)  # (n,)
                at = out[r, start - 1 : start - 1 + n]  # (n, H) hidden states or (n, V) logits
                if blocked:
                    lp = gathered_stats(model.get_output_embeddings(), at, tgt)[0]
                else:
                    lp = at.float().log_softmax(-1).gather(1, tgt[:, None]).squeeze(-1)
                logps.append(lp.sum().item())
    finally:
        model.train(was_training)
    return [None if a is None or c is None else a - c for a, c in zip(logps[0::2], logps[1::2])]


def run_judge_set(engine: Engine, items: Sequence[JudgeItem], max_new_tokens: int) -> tuple[dict, list[dict]]:
    """Greedy responses to every item; returns (metrics, one row per item with response and verdict)."""
    responses = greedy(engine, [it.prompt for it in items], max_new_tokens)
    verdicts = [verdict_of(r) if it.kind != "reflection" else None for it, r in zip(items, responses)]
    judged = [i for i, it in enumerate(items) if it.kind != "reflection"]
    odds = verdict_logodds(engine, [items[i].prompt for i in judged], [responses[i] for i in judged],
                           [items[i].positive for i in judged], [items[i].negative for i in judged])
    scores: list[float | None] = [None] * len(items)
    for i, s in zip(judged, odds):
        scores[i] = s
    m = judge_report(items, verdicts, scores)
    fixed = [bool(verify_response(r, it.label).correct) for it, r in zip(items, responses) if it.kind == "reflection"]
    m["reflection_accuracy"] = _share(fixed)
    m["reflection_n"] = float(len(fixed))
    rows = [asdict(it) | {"response": r, "verdict": v, "logodds": s} for it, r, v, s in zip(items, responses, verdicts, scores)]
    return m, rows


def policy_metrics(engine: Engine, problems: Sequence[Problem], k: int, max_new_tokens: int, seed: int,
                   solve: str = "bare") -> tuple[dict, list[str]]:
    """Greedy accuracy, mean@k and pass@k (k samples at T=1), and the format: the share of greedy
    answers that are boxed (`policy_boxed`) or have no answer at all (`policy_no_answer`).
    Also returns the greedy responses."""
    prompts = [solve_prompt(solve, p.question) for p in problems]
    answers = greedy(engine, prompts, max_new_tokens)
    found = [extract_answer(a) for a in answers]
    m = {"policy_accuracy": _share([bool(verify_response(a, p.answer).correct) for a, p in zip(answers, problems)]),
         "policy_boxed": _share([f.rule == "boxed" for f in found]),
         "policy_no_answer": _share([f.answer is None for f in found])}
    if k > 0:
        groups = engine.generate(prompts, SamplingSpec(k, 1.0, 1.0, max_new_tokens, seed=seed))
        hits = [[bool(verify_response(s.text, p.answer).correct) for s in g] for p, g in zip(problems, groups)]
        m[f"mean_at_{k}"] = sum(map(sum, hits)) / (k * len(problems))
        m[f"pass_at_{k}"] = _share([any(h) for h in hits])
    return m, answers


# --------------------------------------------------------------------------- test-time scaling


def _judge_prompt(template_set: str, question: str, candidate: str) -> str:
    return templates(template_set, "pointwise", "yes_no")[0].render(question=question, candidate=candidate)


def _shown(response: str) -> str:
    found = extract_answer(response).answer
    return found if found is not None else response.strip()[-200:]


def tts_reflect(engine: Engine, problems: Sequence[Problem], answers: Sequence[str], template_set: str,
                max_new_tokens: int, judge_max_new_tokens: int, rounds: int = 2) -> tuple[dict, list[list[str]]]:
    """Self-reflection at test time: each round judges the current answer (pointwise Yes/No) and,
    unless the verdict is `Yes`, re-solves shown the rejected answer. Stops at `Yes` or after
    `rounds` rounds. Returns (metrics, each problem's answers in order) with the extra
    generations (judge calls + re-solves) per problem beyond the first greedy answer."""
    current = list(answers)
    history = [[a] for a in answers]
    active = list(range(len(problems)))
    extra = 0
    fix = templates(template_set, "reflection", "says_wrong")[0]
    for _ in range(rounds):
        if not active:
            break
        verdicts = greedy(engine, [_judge_prompt(template_set, problems[i].question, _shown(current[i])) for i in active],
                          judge_max_new_tokens)
        extra += len(active)
        active = [i for i, v in zip(active, verdicts) if verdict_of(v) != "yes"]
        if not active:
            break
        redo = greedy(engine, [fix.render(question=problems[i].question, response=_shown(current[i])) for i in active],
                      max_new_tokens)
        extra += len(active)
        for i, r in zip(active, redo):
            current[i] = r
            history[i].append(r)
    acc = _share([bool(verify_response(a, p.answer).correct) for a, p in zip(current, problems)])
    return {"tts_reflect_accuracy": acc, "tts_reflect_extra_generations": extra / max(1, len(problems))}, history


def tts_best_of_n(engine: Engine, problems: Sequence[Problem], n: int, template_set: str, max_new_tokens: int,
                  judge_max_new_tokens: int, seed: int, solve: str = "bare") -> dict:
    """Self-verified best-of-N: N samples at T=1, each judged by the model (pointwise Yes/No);
    the majority answer among the accepted ones (among all when none is accepted)."""
    groups = engine.generate([solve_prompt(solve, p.question) for p in problems],
                             SamplingSpec(n, 1.0, 1.0, max_new_tokens, seed=seed))
    flat = [(i, s.text) for i, g in enumerate(groups) for s in g]
    verdicts = greedy(engine, [_judge_prompt(template_set, problems[i].question, _shown(t)) for i, t in flat],
                      judge_max_new_tokens)
    pool: dict[int, list[tuple[str, bool]]] = {}
    for (i, text), v in zip(flat, verdicts):
        pool.setdefault(i, []).append((text, verdict_of(v) == "yes"))
    right, accepted = [], 0
    for i, p in enumerate(problems):
        cands = pool.get(i, [])
        keep = [t for t, ok in cands if ok] or [t for t, _ in cands]
        accepted += sum(ok for _, ok in cands)
        votes = Counter(normalize_label(_shown(t)) for t in keep)
        best = votes.most_common(1)[0][0] if votes else None
        choice = next((t for t in keep if normalize_label(_shown(t)) == best), "")
        right.append(bool(verify_response(choice, p.answer).correct))
    return {"tts_bon_accuracy": _share(right), "tts_bon_extra_generations": (2 * n - 1) if problems else 0.0,
            "tts_bon_accept_rate": accepted / max(1, len(flat))}


def _vote(answers: Sequence[str], weights: Sequence[float]) -> str | None:
    """The answer with the largest total weight (ties: the one seen first)."""
    total: dict[str, float] = {}
    for a, w in zip(answers, weights):
        total[a] = total.get(a, 0.0) + w
    return max(total, key=lambda a: (total[a], -answers.index(a))) if total else None


def tts_compare(engine: Engine, problems: Sequence[Problem], ns: Sequence[int], template_set: str, max_new_tokens: int,
                judge_max_new_tokens: int, seed: int, solve: str = "bare", greedy_answers: Sequence[str] | None = None
                ) -> tuple[dict, list[dict]]:
    """Test-time scaling at equal compute: for each N in `ns`, the same first N of max(ns) samples
    (T=1) per problem, combined four ways, with every generation counted:

    - `majority`: the most frequent answer (N generations, no judge call);
    - `best`: self-verified best-of-N, the sample the model's own judge scores highest, by
      P(Yes) = sigmoid of the verdict log-odds after its greedy pointwise judgement (2N);
    - `weighted`: the answer with the largest sum of P(Yes) over its samples (2N);
    - `reflect`: greedy then self-reflection (2 rounds, `tts_reflect`), independent of N;
    plus `pass` (any of the N right: the ceiling of every selection rule). The judge's own rates,
    over all judged samples: `true_pass` (its verdict is Yes on a right answer) and `false_pass`
    (Yes on a wrong one). Returns (metrics, one row per sample: problem (its position), problem_id,
    index, answer, correct, verdict, p_yes)."""
    n_max = max(ns)
    groups = engine.generate([solve_prompt(solve, p.question) for p in problems],
                             SamplingSpec(n_max, 1.0, 1.0, max_new_tokens, seed=seed))
    flat = [(i, j, s.text) for i, g in enumerate(groups) for j, s in enumerate(g)]
    prompts = [_judge_prompt(template_set, problems[i].question, _shown(t)) for i, _, t in flat]
    verdicts = greedy(engine, prompts, judge_max_new_tokens)
    odds = verdict_logodds(engine, prompts, verdicts, ["Yes"] * len(flat), ["No"] * len(flat))
    rows = []
    for (i, j, text), v, o in zip(flat, verdicts, odds):
        p_yes = 1 / (1 + math.exp(-o)) if o is not None else float(verdict_of(v) == "yes")
        rows.append(dict(problem=i, problem_id=problems[i].id, index=j, answer=normalize_label(_shown(text)),
                         correct=bool(verify_response(text, problems[i].answer).correct), verdict=verdict_of(v), p_yes=p_yes))
    by: dict[int, list[dict]] = {}
    for r in rows:
        by.setdefault(r["problem"], []).append(r)
    m: dict = {}
    for n in ns:
        picks = {"majority": [], "best": [], "weighted": [], "pass": []}
        for i in range(len(problems)):
            cands = by.get(i, [])[:n]
            ok = {c["answer"]: c["correct"] for c in cands}
            picks["majority"].append(ok.get(_vote([c["answer"] for c in cands], [1.0] * len(cands)), False))
            picks["best"].append(max(cands, key=lambda c: c["p_yes"])["correct"] if cands else False)
            picks["weighted"].append(ok.get(_vote([c["answer"] for c in cands], [c["p_yes"] for c in cands]), False))
            picks["pass"].append(any(c["correct"] for c in cands))
        for rule, hits in picks.items():
            m[f"tts_{rule}_at_{n}"] = _share(hits)
        m[f"tts_judge_calls_at_{n}"] = float(n)  # best and weighted: N samples + N judge calls; majority: N
    right = [r for r in rows if r["correct"]]
    wrong = [r for r in rows if not r["correct"]]
    m["judge_true_pass"] = _share([r["verdict"] == "yes" for r in right])
    m["judge_false_pass"] = _share([r["verdict"] == "yes" for r in wrong])
    m["judge_verdict_parse_rate"] = _share([r["verdict"] in ("yes", "no") for r in rows])
    m["judge_auroc_p_yes"] = auroc([r["p_yes"] for r in rows], [r["correct"] for r in rows])
    m["sample_accuracy"] = _share([r["correct"] for r in rows])
    if greedy_answers is None:
        greedy_answers = greedy(engine, [solve_prompt(solve, p.question) for p in problems], max_new_tokens)
    reflect, _ = tts_reflect(engine, problems, greedy_answers, template_set, max_new_tokens, judge_max_new_tokens)
    m |= reflect | {"tts_reflect_generations": 1 + reflect["tts_reflect_extra_generations"]}
    return m, rows


def rows_for_evals(metrics: dict, benchmark: str, n: int) -> list[dict]:
    """`evals` table rows (long format) from a metrics dict; None values are kept as nulls."""
    return [dict(benchmark=benchmark, metric=k, value=None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v), n=n)
            for k, v in sorted(metrics.items())]
