"""Text that may be streamed: the committed token prefix, stop-string hold-back, denoise snapshots.

``committed`` mode sends only text that can no longer change: a request's committed blocks
(``BlockRequest.committed_end``; the whole output once the request stopped), decoded, minus a
tail of ``len(longest stop) - 1`` characters that a stop string starting there could still cut.
The remainder of the final text (stop strings cut exactly as ``Diffulex.generate`` cuts them)
is sent when the request finishes, so the chunks always concatenate to the non-streamed text.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

MASK_GLYPH = "\u25af"  # one undecided position in a denoise snapshot


def committed_tokens(req: Any) -> list[int]:
    """Generated tokens that will not change: the final output once stopped, else whole committed blocks."""
    if getattr(req, "output_token_ids", None) is not None:
        return list(req.output_token_ids)
    end = getattr(req, "committed_end", None)
    if end is None:  # a strategy without committed blocks: nothing is final before the finish
        return []
    lo = req.num_prompt_tokens
    hi = min(end, getattr(req, "target_end", end))
    return list(req.canvas[lo:hi]) if hi > lo else []


class CommittedText:
    """The text of one request already sent; :meth:`update` gives what may be sent next."""

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str]) -> None:
        self.decode = decode
        self.stop = list(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.sent = ""
        self._n = -1  # committed tokens seen at the last update

    def update(self, tokens: list[int]) -> str:
        """New final text for a committed token prefix (possibly ``""``)."""
        if len(tokens) == self._n:
            return ""
        self._n = len(tokens)
        text = self.decode(tokens)
        # A multi-byte character split across tokens decodes to U+FFFD until its last byte commits.
        while text.endswith("\ufffd"):
            text = text[:-1]
        safe = len(text) - self.hold
        for s in self.stop:
            i = text.find(s)
            if i >= 0:
                safe = min(safe, i)
        if safe <= len(self.sent) or not text.startswith(self.sent):
            return ""
        new = text[len(self.sent):safe]
        self.sent += new
        return new

    def finish(self, final_text: str) -> str:
        """The rest of the final text (the request's ``Trajectory.text``)."""
        rest = final_text[len(self.sent):] if final_text.startswith(self.sent) else ""
        self.sent += rest
        return rest


def canvas_snapshot(req: Any, decode: Callable[[list[int]], str], mask_id: int) -> Optional[dict]:
    """The in-flight (not yet committed) blocks of a block request as provisional text; None when none.

    Undecided positions are shown as ``MASK_GLYPH``; ``blocks`` are the step record's block summaries.
    """
    inflight = getattr(req, "inflight", None)
    if not inflight or getattr(req, "stopped", False):
        return None
    lo = max(req.committed_end, req.num_prompt_tokens)
    hi = min(req.block_span(inflight[-1])[1], req.target_end)
    tokens = list(req.canvas[lo:hi])
    parts, run = [], []
    for t in tokens:
        if t == mask_id:
            if run:
                parts.append(decode(run))
                run = []
            parts.append(MASK_GLYPH)
        else:
            run.append(t)
    if run:
        parts.append(decode(run))
    records = getattr(req, "records", None)
    return {"provisional": True, "canvas": "".join(parts), "start": lo - req.num_prompt_tokens,
            "masks": tokens.count(mask_id), "nfe": req.nfe,
            "blocks": list(records[-1].blocks) if records else []}
