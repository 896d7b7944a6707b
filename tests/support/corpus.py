"""Texts of mixed lengths, as a real corpus has them, for tests and benchmarks of batching.

``LENGTHS`` are the lengths in characters of the 215 sentences of the GNU GPL version 3
(Debian's /usr/share/common-licenses/GPL-3, split after . ; : ? or !), capped at 300 as a TTS
corpus is (longer sentences are split before synthesis): 8 to 300 characters, a median near 107,
a long tail. ``texts`` fills them with Spanish words.
"""

from __future__ import annotations

import random

LENGTHS = [
    100, 137, 106, 126, 185, 94, 67, 39, 71, 300, 118, 107, 50, 157, 70, 61, 67, 134, 119, 187,
    148, 100, 141, 96, 185, 68, 241, 92, 83, 23, 12, 69, 107, 75, 36, 65, 155, 108, 84, 234,
    154, 102, 102, 300, 128, 12, 97, 50, 263, 300, 269, 232, 212, 300, 136, 74, 18, 151, 88, 132,
    100, 140, 292, 244, 94, 28, 32, 59, 272, 300, 26, 197, 128, 55, 70, 127, 35, 206, 98, 129,
    84, 114, 170, 149, 92, 133, 300, 117, 27, 213, 226, 300, 116, 157, 211, 92, 300, 162, 223, 176,
    231, 110, 284, 202, 259, 183, 300, 193, 276, 198, 298, 17, 133, 183, 220, 138, 258, 207, 111, 176,
    189, 95, 110, 298, 113, 190, 282, 231, 131, 40, 12, 95, 201, 300, 300, 152, 150, 42, 93, 164,
    103, 67, 109, 45, 177, 84, 175, 300, 113, 300, 8, 131, 73, 300, 151, 256, 239, 132, 300, 296,
    300, 237, 300, 189, 32, 189, 192, 260, 47, 249, 250, 33, 121, 129, 54, 285, 158, 241, 72, 136,
    23, 80, 280, 77, 105, 24, 300, 37, 300, 288, 54, 113, 104, 140, 208, 89, 89, 52, 90, 44,
    72, 120, 95, 26, 87, 26, 112, 54, 50, 146, 107, 100, 133, 98, 72,
]

WORDS = ("el sol brilla sobre la montaña nevada mientras los niños juegan en el parque y la música "
         "suena por la ventana abierta de la biblioteca donde mi abuela lee un libro antiguo").split()


def texts(n: int, seed: int = 20) -> list[str]:
    """``n`` texts whose lengths follow ``LENGTHS``, in a shuffled order (the same for a seed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target = LENGTHS[rng.randrange(len(LENGTHS))]
        words: list[str] = []
        while len(" ".join(words)) < target:
            words.append(WORDS[rng.randrange(len(WORDS))])
        out.append((" ".join(words)[:target - 1] + ".").capitalize())
    return out
