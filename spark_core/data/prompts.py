"""The solve prompt: how a problem becomes the policy's user message.

The tiny model was trained on the bare question (`3+54`); a real instruct model must be told
the answer format, or it answers `3 + 54 equals 57.` and the verifier falls back to the last
number. A config names a preset or gives its own template (`{question}` is replaced, nothing
else is interpreted, so LaTeX braces need no escaping):

- `bare`: the question alone (the tiny model's format);
- `concise`: a short worked answer ending in `\\boxed{}` (real models on a CPU budget);
- `step_by_step`: the Qwen-Math instruction the SPARK paper's models are prompted with.

The system message (`prompts.system`) goes to the engine, which puts it before every prompt,
solve and judge alike; None leaves the chat template's own default.
"""

from __future__ import annotations

SOLVE_PRESETS: dict[str, str] = {
    "bare": "{question}",
    "concise": "{question}\n\nShow the calculation briefly and put the final answer in \\boxed{}.",
    "step_by_step": "{question}\nPlease reason step by step, and put your final answer within \\boxed{}.",
}


def solve_template(value: str) -> str:
    """The template text of a preset name, or `value` itself when it is a template."""
    if value in SOLVE_PRESETS:
        return SOLVE_PRESETS[value]
    if "{question}" not in value:
        raise ValueError(f"solve prompt {value!r} is neither a preset ({', '.join(SOLVE_PRESETS)}) "
                         "nor a template containing {question}")
    return value


def solve_prompt(template: str, question: str) -> str:
    """The user message for one problem: `{question}` in the template replaced by the question."""
    return solve_template(template).replace("{question}", question)
