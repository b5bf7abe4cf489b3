"""A prompt (text or token ids) checked and turned into the token ids a request starts from."""

from __future__ import annotations

from typing import Any, Sequence, Union


def prompt_token_ids(prompt: Union[str, Sequence[int]], tokenizer: Any, config: Any) -> tuple[list[int], int]:
    """(token ids, room): the prompt's ids, valid for the model, and the most tokens generated after
    it in whole blocks under ``runtime.max_model_len``; a ValueError that says what to change otherwise."""
    if isinstance(prompt, str):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"prompt is not valid text: {e.reason} at character {e.start} "
                             f"({prompt[e.start:e.end]!r}); pass a str without lone surrogates, or token ids") from None
        ids = tokenizer.encode(prompt, add_special_tokens=False)
    elif isinstance(prompt, Sequence):
        ids = list(prompt)
    else:
        raise ValueError(f"a prompt is a str or a list of token ids, got {type(prompt).__name__}")
    if not ids:
        raise ValueError("prompt is empty: pass at least one token")
    vocab = config.checkpoint.vocab_size
    bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, int) or t < 0 or t >= vocab), None)
    if bad is not None:
        raise ValueError(f"prompt token ids must be ints in [0, {vocab}), got {bad!r} "
                         f"(a {type(bad).__name__})")
    mask_id = config.model.mask_token_id
    if mask_id in ids:
        raise ValueError(f"prompt contains the mask token id {mask_id} at position {ids.index(mask_id)}; "
                         "a diffusion model treats it as a blank to fill. Remove it from the prompt")
    limit = config.runtime.max_model_len
    if len(ids) >= limit:
        raise ValueError(f"prompt has {len(ids)} tokens but max_model_len is {limit}; shorten the prompt "
                         "or raise max_model_len (up to the model's maximum)")
    block = config.strategy.block_size
    room = (limit // block) * block - len(ids)  # whole blocks must fit under max_model_len
    if room < 1:
        raise ValueError(f"prompt of {len(ids)} tokens leaves no whole block of {block} under "
                         f"max_model_len={limit}")
    return ids, room
