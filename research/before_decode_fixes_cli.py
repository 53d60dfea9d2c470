"""The CLI with the two decode changes of 62c8f80 undone (frozen merged weights, torch.multinomial),
for timing before against after on one machine:  .venv/bin/python research/before_decode_fixes_cli.py iterate ...
(it reproduces "before" at commit bdb6606 only: later, HFEngine keeps the prefill's last position by
index, so frozen weights no longer cost anything and only the sampler is undone here.)"""

import sys
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from decode_speed import _multinomial

    from spark_core.model import lora, rollout

    merged = lora.merged
    lora.merged = lambda *a, **k: merged(*a, **k).requires_grad_(False)
    rollout.sample_next = _multinomial
    from spark_cli.main import app

    sys.argv[0] = "spark"
    sys.exit(app())


if __name__ == "__main__":
    main()
