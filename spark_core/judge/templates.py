"""Judge and reflection prompt templates: the `compact` set (for the tiny model) and the
`paper` set (many phrasings, in the spirit of the SPARK authors' 24 pointwise, 20 pairwise
and 30 + 30 reflection templates, for real instruct models).

Every template asks for its verdict in the policy task's answer format, `\\boxed{...}` (the
authors' judge templates asked for `\\box{...}` while their verifier read `\\boxed{...}`:
not copied), and is checked by the same verifier: exact label match for Yes/No/A/B,
mathematical equivalence for reflection answers. Kinds and wordings:

- `pointwise`, worded `yes_no` (label Yes/No) or `a_b` (A = correct, B = incorrect);
- `pairwise` (label: the slot, A or B, holding the correct answer);
- `reflection`, shown a wrong response: `says_wrong` templates say it is wrong, `asks_check`
  ones only ask to check it; the label is the reference answer.

Fields: `{question}`; pointwise `{candidate}`; pairwise `{a}`, `{b}`; reflection `{response}`.
A candidate is the extracted answer, the full response, or both (`judge_input`), see
`candidate_text`. Each template has a stable id (`set/kind/n`), stored with every recycled
row so SQL can ask which templates the judge fails on.
"""

from __future__ import annotations

from dataclasses import dataclass

JUDGE_INPUTS = ("answer", "cot", "both")


@dataclass(frozen=True)
class Template:
    """One prompt wording."""

    id: str
    kind: str  # pointwise | pairwise | reflection
    wording: str  # yes_no | a_b (pointwise); pair (pairwise); says_wrong | asks_check (reflection)
    text: str

    def render(self, **fields: str) -> str:
        return self.text.format(**fields)


def _set(name: str, kind: str, wording: str, texts: list[str], start: int = 0) -> list[Template]:
    return [Template(f"{name}/{kind}/{start + i}", kind, wording, t) for i, t in enumerate(texts)]


COMPACT: tuple[Template, ...] = tuple(
    _set("compact", "pointwise", "yes_no", ["Check: {question}={candidate}. Yes or No?", "Is {question}={candidate} correct? Yes or No?"])
    + _set("compact", "pointwise", "a_b", ["Check: {question}={candidate}. A correct, B wrong?", "Is {question}={candidate}? A yes, B no."], 2)
    + _set("compact", "pairwise", "pair", ["{question}=? A: {a} B: {b}. Which is correct?", "Which is right for {question}, A: {a} or B: {b}?"])
    + _set("compact", "reflection", "says_wrong", ["{question}: {response} is wrong. Fix it."])
    + _set("compact", "reflection", "asks_check", ["{question}: {response} Check it, fix if wrong."], 1)
)

_BOX_YN = "Answer Yes or No in \\boxed{{}}, e.g. \\boxed{{Yes}}."
_BOX_AB = "Answer A (correct) or B (incorrect) in \\boxed{{}}, e.g. \\boxed{{A}}."
_BOX_PAIR = "Give the letter of the correct answer in \\boxed{{}}, e.g. \\boxed{{A}}."
_BOX_FIX = "Put the final answer in \\boxed{{}}."

_PAPER_YN = [
    "Question: {question}\nProposed answer: {candidate}\nIs the proposed answer correct? " + _BOX_YN,
    "Here is a math problem and a solution to it.\n\nProblem: {question}\n\nSolution: {candidate}\n\nIs the solution's final answer right? Reason step by step, then " + _BOX_YN,
    "You are grading a student's answer.\nProblem: {question}\nStudent's answer: {candidate}\nIs the student correct? " + _BOX_YN,
    "Verify the following.\n{question}\nClaimed result: {candidate}\nDoes the claimed result solve the problem correctly? Check carefully. " + _BOX_YN,
    "Problem:\n{question}\n\nCandidate response:\n{candidate}\n\nAct as a strict judge: is the candidate's final answer correct? " + _BOX_YN,
    "Someone answered the question below.\n{question}\nTheir answer: {candidate}\nWork out the problem yourself and decide whether they are right. " + _BOX_YN,
]
_PAPER_AB = [
    "Question: {question}\nProposed answer: {candidate}\nIs the proposed answer correct? " + _BOX_AB,
    "Here is a problem with an attempted solution.\n\nProblem: {question}\n\nAttempt: {candidate}\n\nJudge the attempt. " + _BOX_AB,
    "Grade this answer.\nProblem: {question}\nAnswer given: {candidate}\nThink it through, then " + _BOX_AB,
    "Check the claim below.\n{question}\nClaim: the answer is {candidate}.\nIs the claim correct? " + _BOX_AB,
    "Problem:\n{question}\n\nResponse to evaluate:\n{candidate}\n\nIs this response's final answer correct? " + _BOX_AB,
    "Decide whether the following answer to the problem is right.\n{question}\nAnswer: {candidate}\n" + _BOX_AB,
]
_PAPER_PAIR = [
    "Question: {question}\n\nAnswer A: {a}\n\nAnswer B: {b}\n\nExactly one of the answers is correct. Which one? " + _BOX_PAIR,
    "Two students solved the same problem.\nProblem: {question}\nStudent A: {a}\nStudent B: {b}\nWho is right? " + _BOX_PAIR,
    "Compare two responses to a math problem.\n\n{question}\n\n[A]\n{a}\n\n[B]\n{b}\n\nOne of them is correct. Reason step by step, then " + _BOX_PAIR,
    "Problem: {question}\nCandidate A: {a}\nCandidate B: {b}\nSolve the problem yourself and pick the correct candidate. " + _BOX_PAIR,
    "Which of these two answers to the question is correct?\n{question}\n(A) {a}\n(B) {b}\n" + _BOX_PAIR,
    "You are a careful grader. The problem is:\n{question}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\nOnly one response is correct. " + _BOX_PAIR,
    "Here are two attempts.\nTask: {question}\nAttempt A: {a}\nAttempt B: {b}\nWhich attempt reaches the correct answer? " + _BOX_PAIR,
    "Question: {question}\nOption A: {a}\nOption B: {b}\nCheck both options and choose the right one. " + _BOX_PAIR,
]
_PAPER_WRONG = [
    "Question: {question}\n\nBelow is an incorrect answer:\n{response}\n\nFind the mistake and solve the problem correctly. " + _BOX_FIX,
    "The following solution to the problem is wrong.\nProblem: {question}\nWrong solution: {response}\nGive the correct solution. " + _BOX_FIX,
    "{question}\n\nA previous attempt answered: {response}\nThat answer is incorrect. Try again, carefully. " + _BOX_FIX,
    "Problem: {question}\nAn incorrect response: {response}\nExplain what went wrong and give the right answer. " + _BOX_FIX,
    "This answer to the question is not correct.\n{question}\nIncorrect answer: {response}\nWhat is the correct answer? " + _BOX_FIX,
]
_PAPER_CHECK = [
    "Question: {question}\n\nHere is an answer:\n{response}\n\nCheck it. If it is wrong, solve the problem correctly. " + _BOX_FIX,
    "Review the solution below.\nProblem: {question}\nSolution: {response}\nVerify each step and give the correct final answer. " + _BOX_FIX,
    "{question}\n\nSomeone answered: {response}\nIs that right? Reflect on it and give the final answer. " + _BOX_FIX,
    "Problem: {question}\nProposed response: {response}\nDouble-check the response and state the correct answer. " + _BOX_FIX,
    "Look again at this problem and a candidate answer.\n{question}\nCandidate: {response}\nCorrect it if needed. " + _BOX_FIX,
]

PAPER: tuple[Template, ...] = tuple(
    _set("paper", "pointwise", "yes_no", _PAPER_YN)
    + _set("paper", "pointwise", "a_b", _PAPER_AB, len(_PAPER_YN))
    + _set("paper", "pairwise", "pair", _PAPER_PAIR)
    + _set("paper", "reflection", "says_wrong", _PAPER_WRONG)
    + _set("paper", "reflection", "asks_check", _PAPER_CHECK, len(_PAPER_WRONG))
)

TEMPLATE_SETS: dict[str, tuple[Template, ...]] = {"compact": COMPACT, "paper": PAPER}


def templates(set_name: str, kind: str, wording: str | None = None) -> list[Template]:
    """The templates of one set and kind (optionally one wording); KeyError names the sets."""
    if set_name not in TEMPLATE_SETS:
        raise KeyError(f"unknown template set {set_name!r}; known: {', '.join(TEMPLATE_SETS)}")
    found = [t for t in TEMPLATE_SETS[set_name] if t.kind == kind and (wording is None or t.wording == wording)]
    if not found:
        raise KeyError(f"template set {set_name!r} has no {kind} templates" + (f" worded {wording}" if wording else ""))
    return found


def pointwise_label(correct: bool, wording: str) -> str:
    """The verdict label of a pointwise prompt: Yes/No, or A (correct) / B (incorrect)."""
    if wording == "yes_no":
        return "Yes" if correct else "No"
    return "A" if correct else "B"


def verdict_options(label: str) -> tuple[str, str]:
    """The two verdicts a judge prompt with this label offers: (Yes, No) or (A, B)."""
    return ("Yes", "No") if label in ("Yes", "No") else ("A", "B")


def candidate_text(response: str, answer: str | None, judge_input: str) -> str:
    """What the judge is shown of a rollout: its extracted answer (the authors' code), its full
    chain of thought, or both (the paper's best ablation)."""
    if judge_input == "answer":
        return answer or ""
    if judge_input == "cot":
        return response
    if judge_input == "both":
        return f"{response}\nFinal answer: {answer}"
    raise ValueError(f"unknown judge_input {judge_input!r}; choose one of {', '.join(JUDGE_INPUTS)}")
