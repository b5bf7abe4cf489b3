"""Tiny byte-level BPE tokenizer carrying a family's real special-token strings.

The vocabulary is: the family's special tokens at ids 0..n-1 (in the order given),
then the 256 byte tokens, then a few deterministic merges. Byte-level encoding makes
every string round-trip exactly, which is all the tests and tiny models need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

# A handful of merges so the tokenizer is a real BPE (multi-byte tokens exist),
# chosen to hit the test prompt "Solve: 12 + 30." and common English pairs.
_MERGES: tuple[tuple[str, str], ...] = (
    ("Ġ", "t"), ("h", "e"), ("i", "n"), ("e", "r"),
    ("o", "l"), ("1", "2"), ("3", "0"), ("Ġ", "+"),
)
# The same minus the digit merges (the trained tiny models' tokenizers).
WORD_MERGES: tuple[tuple[str, str], ...] = tuple(m for m in _MERGES if not any(c.isdigit() for c in m[0] + m[1]))


@dataclass(frozen=True)
class TokenizerSpec:
    """What a family's tokenizer looks like.

    ``specials`` are placed at ids 0..n-1 in order; ``roles`` maps HF special-token
    attributes (``bos_token``, ``eos_token``, ``pad_token``, ``mask_token``, ``unk_token``)
    to strings in ``specials``; ``chat_template`` is a Jinja template.
    """

    specials: tuple[str, ...]
    roles: dict[str, str] = field(default_factory=dict)
    chat_template: str = ""
    # BPE merges after the byte tokens. The trained models use merges without digits, so
    # every digit of a number is one token (arithmetic answers have one length per value).
    merges: tuple[tuple[str, str], ...] = _MERGES

    def token_id(self, token: str) -> int:
        """Id of a special token (its index in ``specials``)."""
        return self.specials.index(token)

    def role_id(self, role: str) -> int:
        """Id of the token playing ``role`` (e.g. ``"eos_token"``)."""
        return self.token_id(self.roles[role])

    @property
    def vocab_len(self) -> int:
        """Number of tokens the tokenizer has (specials + bytes + merges)."""
        return len(self.specials) + 256 + len(self.merges)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable-char table, ordered by byte value (deterministic)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    """Build the `tokenizers.Tokenizer` for ``spec`` (ids fully determined by the spec)."""
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(spec.specials)}
    for b, ch in sorted(_bytes_to_unicode().items()):
        vocab[ch] = len(vocab)
    for left, right in spec.merges:
        vocab[left + right] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(spec.merges)))
    # No prefix space, so decode(encode(s)) == s exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # The specials already own ids 0..n-1; registering them only marks them special.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in spec.specials])
    return tok


def write_tokenizer(spec: TokenizerSpec, out_dir: Path, extra_config: dict | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out_dir``."""
    out_dir = Path(out_dir)
    build_tokenizer(spec).save(str(out_dir / "tokenizer.json"))
    added = {
        str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, s in enumerate(spec.specials)
    }
    config = {
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{role: tok for role, tok in sorted(spec.roles.items())},
        # Specials without a standard role (chat markers, ...) are still "additional".
        "additional_special_tokens": [s for s in spec.specials if s not in spec.roles.values()],
        **(extra_config or {}),
    }
    if spec.chat_template:
        config["chat_template"] = spec.chat_template
    special_map = {role: tok for role, tok in sorted(spec.roles.items())}
    special_map["additional_special_tokens"] = config["additional_special_tokens"]
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, sort_keys=True) + "\n")
