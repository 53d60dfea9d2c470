"""Answer extraction and equivalence: the verifier every reward in SPARK goes through.
(This package is the verifier; `worker` is its math-verify helper process, `file_mode` the
`spark verify` command over a file.)

Three separate steps, as in verl's reward_score modules:

1. **extract** the final answer from a response, recording which rule matched
   (`boxed`, `gsm8k`, `answer-is`, `last-number`);
2. **normalize** it (strip `$`, `\\text{}`, thousands separators, units, ...);
3. **compare** it with the reference: exact label match for judge verdicts, an exact
   fast path for plain numbers, math-verify (with a time limit) for everything else.

`verify_response` ties them together and returns a `Verdict` whose `correct` is `True`,
`False`, or `None` ("cannot judge": empty reference, comparison timed out), never a
silent 0 for a verifier failure.

Judge-label rule (documented in the README): a verdict matches a label `Yes`, `No`, `A` or
`B` when, after removing `\\text{}`/`\\textbf{}`/`\\mathrm{}`/`\\mathbf{}` wrappers, `$`
signs, surrounding whitespace and one trailing period, it equals the label ignoring case.
Anything else (`Yes, it is`, `(A)`, `A or B`) is not a match.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

ExtractMode = Literal["auto", "boxed", "gsm8k", "answer-is", "last-number"]
EXTRACT_MODES: tuple[str, ...] = ("auto", "boxed", "gsm8k", "answer-is", "last-number")

#: The verdict labels of judge prompts (pointwise Yes/No or A/B, pairwise A/B).
LABELS: tuple[str, ...] = ("Yes", "No", "A", "B")

#: Default per-comparison time limit for math-verify, in seconds.
DEFAULT_TIMEOUT_S = 5.0

# Integers longer than this go to math-verify: it compares numbers at 15 significant digits,
# so an exact comparison of longer ones could disagree with it.
_FAST_MAX_DIGITS = 15
_MAX_NUMBER_CHARS = 1000  # longer plain numbers are left to math-verify (int() caps at 4,300 digits)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Extraction:
    """The final answer found in a response and the rule that found it (both None if none)."""

    answer: str | None
    rule: str | None


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one response against one reference.

    correct: True / False, or None when the verifier cannot judge (see `error`).
    extracted, rule: the extracted answer and the extraction rule (None: no answer found).
    error: why the verifier could not judge, else None.
    """

    correct: bool | None
    extracted: str | None
    rule: str | None
    error: str | None = None


# --------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last complete, brace-balanced `\\boxed{...}` or `\\fbox{...}`.

    The SPARK authors' code takes the first `\\boxed{` to the last `}`; this takes the last
    box whose braces balance, so `\\boxed{1} and \\boxed{\\frac{2}{3}}` gives `\\frac{2}{3}`
    and an unterminated trailing `\\boxed{4` is ignored in favour of an earlier complete one.
    """
    found = None
    for m in _BOX_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            if c == "\\" and i + 1 < len(text):
                i += 2  # an escaped brace \{ does not open or close the box
                continue
            depth += (c == "{") - (c == "}")
            i += 1
        if depth == 0:
            found = text[m.end() : i - 1]
    return found


_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS_RE = re.compile(
    r"(?:the\s+)?(?:final\s+)?answer\s+is\s*:?\s*(.+?)\s*(?:\.\s|\.?$|\n)",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")


def extract_answer(text: str, mode: str = "auto") -> Extraction:
    """Find the final answer in `text` with one rule, or the first rule that matches (`auto`).

    >>> extract_answer("so 2+3=5. \\\\boxed{5}")
    Extraction(answer='5', rule='boxed')
    >>> extract_answer("She pays 3*4=12\\n#### 12")
    Extraction(answer='12', rule='gsm8k')
    """
    if mode not in EXTRACT_MODES:
        raise ValueError(f"unknown extract mode {mode!r}; choose one of {', '.join(EXTRACT_MODES)}")
    rules = ("boxed", "gsm8k", "answer-is", "last-number") if mode == "auto" else (mode,)
    for rule in rules:
        answer = _EXTRACTORS[rule](text)
        if answer is not None and answer.strip():
            return Extraction(answer.strip(), rule)
    return Extraction(None, None)


def _extract_gsm8k(text: str) -> str | None:
    found = _GSM8K_RE.findall(text)
    return found[-1] if found else None


def _extract_answer_is(text: str) -> str | None:
    found = _ANSWER_IS_RE.findall(text)
    return found[-1].strip().strip("$").strip() if found else None


def _extract_last_number(text: str) -> str | None:
    found = _NUMBER_RE.findall(text)
    return found[-1] if found else None


_EXTRACTORS = {
    "boxed": last_boxed,
    "gsm8k": _extract_gsm8k,
    "answer-is": _extract_answer_is,
    "last-number": _extract_last_number,
}


def extract_reference(reference: str) -> str:
    """The answer inside a reference: its last box, its `#### N`, else the whole string."""
    boxed = last_boxed(reference)
    if boxed is not None:
        return boxed.strip()
    gsm = _extract_gsm8k(reference)
    if gsm is not None and gsm.strip():
        return gsm.strip()
    return reference.strip()


# --------------------------------------------------------------------------- normalization

_WRAPPER_RE = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|textrm|mbox)\s*\{(.*)\}$", re.DOTALL)
# A unit is a word of two or more letters after a space or inside \text{}: "12 cm", "5\text{ dollars}".
# One letter ("2 x") is an expression, left to math-verify.
_UNIT_RE = re.compile(r"^(.*?\d)(?:\s+|\s*\\(?:text|mbox|mathrm)\{\s*)[a-zA-Z]{2,}[a-zA-Z .]*\}?$")
_PLAIN_INT_RE = re.compile(r"^[+-]?\d+$")
_PLAIN_DEC_RE = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+)$")
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_FRAC_RE = re.compile(r"^([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{(\d+)\}$")
_SLASH_RE = re.compile(r"^([+-]?\d+)/(\d+)$")


def _unwrap(s: str) -> str:
    s = s.strip()
    while True:
        m = _WRAPPER_RE.match(s)
        if not m:
            return s
        s = m.group(1).strip()


def normalize_label(s: str) -> str:
    """Judge verdict as compared with a label: unwrapped, no `$`, no trailing period, folded case."""
    s = _unwrap(s.replace("$", ""))
    if s.endswith("."):
        s = s[:-1].rstrip()
    return _unwrap(s).casefold()


@dataclass(frozen=True)
class _Number:
    value: Fraction
    exact_int: bool  # a plain integer of <= 15 digits (no decimals, no fraction): the fast path may say "different"


def parse_number(s: str) -> _Number | None:
    """A plain number in `s` after stripping `$`, `\\$`, `\\text{}`, spacing commands, units,
    thousands separators and a trailing period; None if `s` is anything else.

    A percent sign makes it None: math-verify reads `50\\%` as both 50 and 0.5 but `-50\\%`
    only as -0.5 and `1,000\\%` as a set, and its verdict is the one to keep.
    """
    t = _unwrap(s.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "").replace("\\ ", ""))
    t = t.replace("{,}", ",").strip()
    if t.endswith("."):
        t = t[:-1].rstrip()
    if "%" in t or len(t) > _MAX_NUMBER_CHARS:
        # Python refuses int() of over 4,300 digits; math-verify decides those under its time limit.
        return None
    m = _UNIT_RE.match(t)
    if m:
        t = m.group(1).strip()
    if _THOUSANDS_RE.match(t):
        t = t.replace(",", "")
    if _PLAIN_INT_RE.match(t):
        digits = len(t.lstrip("+-"))
        return _Number(Fraction(int(t)), digits <= _FAST_MAX_DIGITS)
    if _PLAIN_DEC_RE.match(t):
        return _Number(Fraction(t), False)
    m = _FRAC_RE.match(t) or _SLASH_RE.match(t)
    if m:
        sign, num, den = (m.group(1), m.group(2), m.group(3)) if m.re is _FRAC_RE else ("", m.group(1), m.group(2))
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return _Number(-value if sign == "-" else value, False)
    return None


def fast_equal(pred: str, ref: str) -> bool | None:
    """Exact verdict for plain numbers, None when math-verify must decide.

    Says True when both sides are the same rational number; says False only when both are
    plain integers of at most 15 digits (where math-verify's tolerances cannot make them
    equal). Tested against math-verify in tests/test_verify.py: the verdicts agree wherever
    math-verify can parse both sides; in addition a trailing period (`\\boxed{12.}`), which
    math-verify fails to parse, is read as the number.
    """
    p, r = parse_number(pred), parse_number(ref)
    if p is None or r is None:
        return None
    if p.value == r.value:
        return True
    if p.exact_int and r.exact_int:
        return False
    return None


# --------------------------------------------------------------------------- math-verify with a time limit


class _Timeout(Exception):
    pass


def _math_verify_equal(pred: str, ref: str) -> bool:
    """math-verify on already extracted answers (each wrapped in a box so LaTeX parsing applies)."""
    from math_verify import parse, verify

    # Quiet their "timeout is disabled" warning: the timeout is ours (below).
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Their own signal-based timeouts are off: ours covers parse + verify together and also
    # works off the main thread (see math_equal).
    gold = parse(f"\\boxed{{{ref}}}", parsing_timeout=None)
    target = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    if not gold or not target:
        return False
    return bool(verify(gold, target, timeout_seconds=None))


def _with_alarm(pred: str, ref: str, timeout_s: float) -> bool:
    def on_alarm(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return _math_verify_equal(pred, ref)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class _Worker:
    """A child process that runs math-verify, killed when a comparison overruns its limit.

    A SIGALRM in the same process is not enough: `9^{9^{9^{9}}}` makes sympy compute a huge
    integer power inside C code, where no Python signal handler runs, and it never returns
    (measured: still running after 120 s). Only killing the process bounds it. The child also
    sets its own alarm, which ends the ordinary slow cases without a restart. It is a plain
    subprocess (not multiprocessing), so it works from any thread and any main module.
    """

    #: Seconds allowed for the child to start (it imports sympy and math-verify).
    START_TIMEOUT_S = 120.0
    #: Extra seconds, past the limit, before the child is killed.
    KILL_MARGIN_S = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._buf = b""

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "spark_core.verify.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        )
        self._buf = b""
        if self._read_line(self.START_TIMEOUT_S) is None:
            self._kill()
            raise RuntimeError("math-verify helper process did not start")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                pipe.close()
        self._proc = None

    def _read_line(self, timeout_s: float) -> list | None:
        deadline = time.monotonic() + timeout_s
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("helper process exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def equal(self, pred: str, ref: str, timeout_s: float) -> tuple[str, object]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            try:
                self._proc.stdin.write((json.dumps([pred, ref, timeout_s]) + "\n").encode())
                reply = self._read_line(timeout_s + self.KILL_MARGIN_S)
            except (EOFError, OSError) as e:  # the child died (e.g. out of memory)
                self._kill()
                return ("error", f"helper process died: {type(e).__name__}")
            if reply is None:
                self._kill()
                return ("timeout", None)
            return tuple(reply)


_WORKER = _Worker()


def math_equal(pred: str, ref: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[bool | None, str | None]:
    """(equal, error): fast path for plain numbers, else math-verify limited to `timeout_s`.

    math-verify runs in a helper process (see `_Worker`), which works from any thread
    (Prefect runs tasks in worker threads, where SIGALRM cannot be used). A timeout gives
    (None, "math-verify timed out ...").
    """
    fast = fast_equal(pred, ref)
    if fast is not None:
        return fast, None
    status, value = _WORKER.equal(pred, ref, timeout_s)
    if status == "ok":
        return bool(value), None
    if status == "timeout":
        return None, f"math-verify timed out after {timeout_s:g}s"
    return None, f"math-verify failed: {value}"


# --------------------------------------------------------------------------- the verifier


def number_text(value: object) -> str | None:
    """A finite int or float reference as text, without a spurious `.0` (AMC stores `27.0`);
    None for anything else (bools, NaN, infinities, non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def is_label(reference: str) -> bool:
    """Whether a reference is a judge verdict label (Yes/No/A/B), compared by label rule."""
    return reference.strip() in LABELS


def labels_match(pred: str, label: str) -> bool:
    """The exact label rule of the module docstring."""
    return normalize_label(pred) == label.strip().casefold()


def verify_response(
    response: str,
    reference: str,
    extract: str = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Verdict:
    """Extract the final answer of `response` and compare it with `reference`.

    A reference that is a label (`Yes`/`No`/`A`/`B`) is matched by the label rule; any other
    reference is reduced to its answer (last box, `#### N`, or itself) and compared
    mathematically. No answer in the response is simply wrong (`correct=False`).

    >>> verify_response("3+4=7. \\\\boxed{7}", "7").correct
    True
    >>> verify_response("\\\\boxed{\\\\text{No}}", "No").correct
    True
    """
    found = extract_answer(response, extract)
    ref = extract_reference(reference)
    if not ref:
        return Verdict(None, found.answer, found.rule, "reference is empty")
    if found.answer is None:
        return Verdict(False, None, None)
    if is_label(ref):
        return Verdict(labels_match(found.answer, ref), found.answer, found.rule)
    equal, error = math_equal(found.answer, ref, timeout_s)
    return Verdict(equal, found.answer, found.rule, error)
