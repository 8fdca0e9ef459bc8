"""Write `lathe_pairs.json` (rm / dpo) and `lathe_feedback.json` (kto) from lathe's own demo data.

The preferred answer is the right one (the identity answer, the number spelled correctly);
the other is plausible but wrong (another model's name, a digit-by-digit reading, an
off-by-one number), so a reward model or DPO has a real, learnable preference to pick up.

    python data/make_preferences.py   # rewrites both files (same rows every time)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from make_synthetic import ONES, in_words

SEED = 4321
HERE = Path(__file__).resolve().parent
WRONG_IDENTITY = [
    "I am ChatGPT, made by OpenAI.",
    "I am a human being typing these answers.",
    "I do not have a name.",
    "I am Llama, made by Meta.",
]


def rejected_number(n: int, rng: random.Random) -> str:
    kind = rng.choice(["digits", "off_by_one"])
    if kind == "digits":
        return " ".join(ONES[int(d)] for d in str(n))
    return in_words((n + 1) % 1000)


def main() -> None:
    rng = random.Random(SEED)
    identity = json.loads((HERE / "lathe_identity.json").read_text(encoding="utf-8"))
    numbers = json.loads((HERE / "lathe_numbers.json").read_text(encoding="utf-8"))[:60]
    pairs, feedback = [], []
    for row in identity:
        question = row["instruction"] + (f"\n{row['input']}" if row["input"] else "")
        wrong = rng.choice(WRONG_IDENTITY)
        pairs.append({"instruction": question, "chosen": row["output"], "rejected": wrong})
        feedback.append({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": row["output"]}], "label": True})
        feedback.append({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": wrong}], "label": False})
    for row in numbers:
        question = f"{row['instruction']}\n{row['input']}"
        wrong = rejected_number(int(row["input"]), rng)
        if wrong == row["output"]:
            continue
        pairs.append({"instruction": question, "chosen": row["output"], "rejected": wrong})
        feedback.append({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": rng.choice([row["output"], wrong])}],
                         "label": None})
        feedback[-1]["label"] = feedback[-1]["messages"][1]["content"] == row["output"]
    for name, rows in (("lathe_pairs.json", pairs), ("lathe_feedback.json", feedback)):
        (HERE / name).write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
