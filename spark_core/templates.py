"""Judge and reflection prompt templates (the `compact` set, short enough for the tiny model).

Every template asks for its verdict in the policy task's answer format, `\\boxed{...}`, and
is checked by the same verifier (exact label match for Yes/No/A/B, mathematical equivalence
for reflection answers). Kinds:

- `pointwise` with wording `yes_no` (label Yes/No) or `a_b` (A = correct, B = incorrect);
- `pairwise` (label: the slot, A or B, holding the correct answer);
- `reflection`, shown a wrong response (its answer, or its whole chain of thought), some
  templates saying it is wrong and some only asking to check it; label = the reference.

Each template has a stable id (`set/kind/n`), stored with every recycled row so SQL can ask
which templates the judge fails on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    """One prompt wording. `text` is formatted with question, answer, a, b or response."""

    id: str
    kind: str  # pointwise | pairwise | reflection
    wording: str  # yes_no | a_b (pointwise); pair (pairwise); says_wrong | asks_check (reflection)
    text: str

    def render(self, **fields: str) -> str:
        return self.text.format(**fields)


COMPACT: tuple[Template, ...] = (
    Template("compact/pointwise/0", "pointwise", "yes_no", "Check: {question}={answer}. Yes or No?"),
    Template("compact/pointwise/1", "pointwise", "yes_no", "Is {question}={answer} correct? Yes or No?"),
    Template("compact/pointwise/2", "pointwise", "a_b", "Check: {question}={answer}. A correct, B wrong?"),
    Template("compact/pointwise/3", "pointwise", "a_b", "Is {question}={answer}? A yes, B no."),
    Template("compact/pairwise/0", "pairwise", "pair", "{question}=? A: {a} B: {b}. Which is correct?"),
    Template("compact/pairwise/1", "pairwise", "pair", "Which is right for {question}, A: {a} or B: {b}?"),
    Template("compact/reflection/0", "reflection", "says_wrong", "{question}: {response} is wrong. Fix it."),
    Template("compact/reflection/1", "reflection", "asks_check", "{question}: {response} Check it, fix if wrong."),
)

TEMPLATE_SETS: dict[str, tuple[Template, ...]] = {"compact": COMPACT}


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
