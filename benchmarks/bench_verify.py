"""Throughput of numeric verification: spark_core.verify against math-verify alone.

Each case is a short worked response ending in a boxed number (half right, half wrong;
some with `$`, thousands separators or units) checked against a numeric reference, the
workload of the policy phase. Run: `.venv/bin/python benchmarks/bench_verify.py [N]`.
"""

from __future__ import annotations

import random
import sys
import time

from spark_core.verify import verify_response


def cases(n: int, seed: int = 0) -> list[tuple[str, str, bool]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ref = rng.randint(-9999, 99999)
        right = i % 2 == 0
        got = ref if right else ref + rng.choice([-10, -1, 1, 2, 100])
        shown = rng.choice([f"{got}", f"{got:,}", f"\\${got}", f"{got} \\text{{ apples}}"])
        out.append((f"We add the parts: {rng.randint(1, 99)}+{rng.randint(1, 99)}. \\boxed{{{shown}}}", str(ref), right))
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    data = cases(n)
    start = time.perf_counter()
    results = [verify_response(resp, ref) for resp, ref, _ in data]
    spark_s = time.perf_counter() - start
    assert all(r.correct == want for r, (_, _, want) in zip(results, data)), "a verdict differs from the truth"

    from math_verify import parse, verify

    m = min(n, 2000)
    start = time.perf_counter()
    mv = [verify(parse(ref), parse(resp)) for resp, ref, _ in data[:m]]
    mv_s = time.perf_counter() - start
    agree = sum(bool(a) == r.correct for a, r in zip(mv, results[:m]))
    print(f"spark_core.verify: {n} numeric verifications in {spark_s:.2f}s = {n / spark_s:,.0f}/s")
    print(f"math-verify alone: {m} in {mv_s:.2f}s = {m / mv_s:,.0f}/s; same verdict on {agree}/{m}")


if __name__ == "__main__":
    main()
