"""The ``model`` config group: which checkpoint, under which name, in which dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .enums import DType
from .errors import coerce_enum


@dataclass
class ModelConfig:
    """Where the checkpoint is and how to read it."""

    # Checkpoint directory (a Hugging Face layout on local disk). A relative path is
    # resolved against Config.model_root (env DIFFULEX_MODEL_ROOT).
    path: str = ""
    # Model name (e.g. llada2_mini, dream_7b); see diffulex/config/families.py.
    # None: detected from the checkpoint's config.json.
    name: Optional[str] = None
    # Use the project's own tiny checkpoint of this family (written once into the tiny cache)
    # instead of a downloaded one, unless `path` names an existing checkpoint. None: use `path`.
    tiny: Optional[str] = None
    # With `tiny`: the shipped trained tiny model of that family (llada2, llada, sdar; trained on
    # arithmetic, docs/models.md) instead of random weights.
    trained: bool = False
    # Weight dtype. auto: bfloat16 on CUDA, float32 on CPU.
    dtype: DType = DType.AUTO
    # Mask token id. None: the tokenizer's mask token, else the HF config's mask_token_id.
    # An explicit value always wins.
    mask_token_id: Optional[int] = None
    # True (the seed's rule): the HF config is loaded with AutoConfig(trust_remote_code=True), so
    # a checkpoint's configuration / tokenization modules run. False: no code from the checkpoint
    # folder runs; the natively implemented families load through Diffulex's own config classes
    # and the `tokenizers` files, and a checkpoint that would need its code is refused.
    trust_remote_code: bool = True

    def validate(self) -> None:
        if isinstance(self.dtype, str) and ("8" in self.dtype or "e4m3" in self.dtype.lower()):
            from .errors import config_error
            raise config_error("model.dtype", self.dtype, "one of 'auto', 'float32', 'bfloat16', 'float16' (the "
                               "dtype of activations and of full-precision weights)",
                               "keep model.dtype and set quantization.weights='fp8' (Diffulex(path, "
                               "quantization='fp8'); Hydra: quantization=fp8) for FP8 weights")
        self.dtype = coerce_enum(DType, "model.dtype", self.dtype)
        if not isinstance(self.trust_remote_code, bool):
            from .errors import config_error
            raise config_error("model.trust_remote_code", self.trust_remote_code, "True or False",
                               "pass trust_remote_code=False to run no code from the checkpoint folder")
        if not isinstance(self.trained, bool) or (self.trained and self.tiny is None):
            from .errors import config_error
            raise config_error("model.trained", self.trained, "a bool, true only together with model.tiny",
                               "set model.tiny to the family whose trained tiny model you want")
        if self.mask_token_id is not None and (isinstance(self.mask_token_id, bool)
                                               or not isinstance(self.mask_token_id, int)
                                               or self.mask_token_id < 0):
            from .errors import config_error
            raise config_error("model.mask_token_id", self.mask_token_id, "a non-negative int or None",
                               "pass the checkpoint's mask token id, or leave it unset")
