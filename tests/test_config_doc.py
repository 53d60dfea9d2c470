"""docs/config.md is generated from the typed config and must not go stale; every field is in it."""

from pathlib import Path

from spark_core.config import SparkConfig
from spark_core.config_doc import OUT, main, reference

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    assert main(["--check"]) == 0, "docs/config.md is stale: run `python -m spark_core.config_doc`"
    assert OUT.read_text() == reference()


def test_every_field_has_a_row_and_a_description():
    text = reference()
    for section in ("problems", "model", "rollout", "train", "spark", "eval", "warmup", "prompts"):
        assert f"## `{section}`" in text
        for name, field in getattr(SparkConfig.model_fields[section].annotation, "model_fields").items():
            assert f"| `{name}` |" in text
            assert field.description, f"{section}.{name} has no docstring"


def test_check_fails_on_a_stale_file(tmp_path):
    stale = tmp_path / "config.md"
    stale.write_text(reference().replace("`hard`", "`soft`"))
    assert main(["--check", "--out", str(stale)]) == 1
    assert main(["--out", str(stale)]) == 0 and main(["--check", "--out", str(stale)]) == 0


def test_shipped_configs_start_with_what_they_are_for():
    for f in sorted((ROOT / "configs").glob("*.yaml")):
        first = f.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 20, f"{f.name}: the first line should say what it is for"
