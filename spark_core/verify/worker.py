"""The helper process behind `verify.math_equal`: math-verify comparisons over stdin/stdout.

One JSON request per line, `[pred, ref, timeout_s]`, answered by one line `[status, value]`
with status `ok` (value: bool), `timeout` or `error` (value: message). Run as
`python -m spark_core.verify.worker`; the parent kills it when a comparison overruns.
"""

from __future__ import annotations

import json
import sys

from spark_core.verify import _Timeout, _with_alarm


def main() -> None:
    out = sys.stdout
    out.write('["ready", null]\n')
    out.flush()
    for line in sys.stdin:
        try:
            pred, ref, timeout_s = json.loads(line)
            reply = ["ok", bool(_with_alarm(pred, ref, float(timeout_s)))]
        except _Timeout:
            reply = ["timeout", None]
        except Exception as e:  # a math-verify crash on odd input is "cannot judge", reported
            reply = ["error", f"{type(e).__name__}: {e}"[:200]]
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
