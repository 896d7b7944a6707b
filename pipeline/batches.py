"""Which claimed texts a generator synthesizes together.

A model whose batch costs what its longest text costs (``batch_cost = "longest"``: it pads every
text to the longest) wastes its time on a short text batched with a long one. For such a model
the batch is formed from a window of the claimed queue, grouped by length; otherwise it is the
queue's order. Either way the oldest claimed text is always in the next batch, so no text
waits behind shorter ones that keep coming: a text at position p of the queue is synthesized
within p batches, whatever is claimed after it.
"""

from __future__ import annotations

import collections

WINDOW_BATCHES = 4  # the window is this many batches of the queue's head


def next_batch(queue: collections.deque, size: int, by_length: bool) -> list[dict]:
    """Take the next batch (at most ``size`` texts) off ``queue``, the generator's claimed texts in
    claim order. A ``suspect`` text (under way when a generator died) goes alone, and is never
    taken into another's batch: a text that kills its process is found and charged, not its
    batch-mates. With ``by_length``, the oldest text's batch-mates are the texts of the window
    nearest to it in length, the ones no longer than it first, so the oldest is usually the
    longest of its batch and short texts gather with short ones."""
    if not queue:
        return []
    head = queue.popleft()
    if size <= 1 or head.get("suspect"):
        return [head]
    if not by_length:
        unit = [head]
        while queue and len(unit) < size and not queue[0].get("suspect"):
            unit.append(queue.popleft())
        return unit
    window = [(i, e) for i, e in zip(range(WINDOW_BATCHES * size), queue, strict=False) if not e.get("suspect")]
    n = len(head["text"])
    # not longer than the head first (nearest first), then the shortest of the longer ones
    window.sort(key=lambda ie: (len(ie[1]["text"]) > n, abs(len(ie[1]["text"]) - n), ie[0]))
    chosen = {i for i, _ in window[:size - 1]}
    unit = [head] + [e for i, e in enumerate(queue) if i in chosen]
    rest = [e for i, e in enumerate(queue) if i not in chosen]
    queue.clear()
    queue.extend(rest)
    return unit
