"""Write `lathe_numbers.json`: spell a number from 0 to 999 in English words.

Why this task: it is a deterministic rule a tiny random-init model can pick up in a couple of
minutes of CPU training, and the result is easy to judge by eye ("247" -> "two hundred
forty-seven"). Digits are single tokens in the demo tokenizer, so the model learns a map from
each digit and its place to a word, not one answer per number.

    python data/make_synthetic.py   # rewrites data/lathe_numbers.json (same rows every time)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
ROWS = 300
INSTRUCTION = "Spell out this number in words."

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
        "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def in_words(n: int) -> str:
    """English words for 0 <= n <= 999, e.g. 247 -> 'two hundred forty-seven'."""
    if n < 20:
        return ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens] + ("-" + ONES[ones] if ones else "")
    hundreds, rest = divmod(n, 100)
    return ONES[hundreds] + " hundred" + (" " + in_words(rest) if rest else "")


def rows(seed: int = SEED, count: int = ROWS) -> list[dict[str, str]]:
    numbers = random.Random(seed).sample(range(1000), count)
    return [{"instruction": INSTRUCTION, "input": str(n), "output": in_words(n)} for n in numbers]


if __name__ == "__main__":
    out = Path(__file__).with_name("lathe_numbers.json")
    out.write_text(json.dumps(rows(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {ROWS} rows to {out}")
