"""The tiny checkpoint shipped under data/ is the one configs/tiny.yaml describes, and meets
the model-layer targets it was built for."""

import json
from pathlib import Path

import pytest

from spark_core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "tiny-model"


@pytest.fixture(scope="module")
def shipped() -> Path:
    if not (SHIPPED / "config.json").is_file():
        pytest.fail(f"{SHIPPED} is missing: remake it with `spark bootstrap -c configs/tiny.yaml --capacity-check`")
    return SHIPPED


def test_shipped_checkpoint_matches_the_bootstrap_configuration(shipped):
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    built = json.loads((shipped / "bootstrap.json").read_text())
    assert built["seed"] == cfg.seed
    assert built["problems"] == cfg.problems.model_dump(mode="json")
    want = cfg.bootstrap.model_dump(mode="json")
    # Thread count changes speed (and float summation order), not the recipe.
    built["bootstrap"].pop("threads"), want.pop("threads")
    built["bootstrap"].setdefault("judge_check", "forward")  # added after the build; its default is the recipe
    assert built["bootstrap"] == want
    assert cfg.model.path == "data/tiny-model"


def test_shipped_metrics_meet_the_targets(shipped):
    m = json.loads((shipped / "metrics.json").read_text())
    for key in ("seconds", "solve_accuracy", "judge_parse_rate", "judge_accuracy", "capacity_judge_accuracy", "capacity_seconds"):
        assert key in m, key
    for key in ("solve_accuracy", "judge_parse_rate", "judge_accuracy", "capacity_judge_accuracy"):
        assert 0.0 <= m[key] <= 1.0
    assert 0.2 <= m["solve_accuracy"] <= 0.7
    assert m["judge_parse_rate"] >= 0.95
    assert m["judge_accuracy"] <= 0.65
    assert m["capacity_judge_accuracy"] >= 0.9


def test_shipped_weights_answer_in_format(shipped):
    """A quick re-measurement on the weights themselves, not only their metrics.json."""
    from spark_core.model.bootstrap import judge_set
    from spark_core.data.problems import generate_problems
    from spark_core.model.rollout import HFEngine, SamplingSpec
    from spark_core.verify import extract_answer, verify_response

    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    held = generate_problems(cfg.problems, cfg.seed)[1][:30]
    engine = HFEngine(shipped)
    greedy = SamplingSpec(group_size=1, temperature=0.0, max_new_tokens=96)
    solved = engine.generate([p.question for p in held], greedy)
    assert sum(bool(verify_response(g[0].text, p.answer).correct) for p, g in zip(held, solved)) >= 10
    examples = judge_set(held, cfg.seed + 2)
    verdicts = [extract_answer(g[0].text, "boxed").answer for g in engine.generate([e.prompt for e in examples], greedy)]
    assert sum(v in ("Yes", "No", "A", "B") for v in verdicts) >= 0.9 * len(examples)
