"""Write `data/lathe_arithmetic/lathe_arithmetic.json`: arithmetic word problems with numeric answers,
in English and Chinese, for `stage: grpo` / `rloo` with the `accuracy` reward.

Why this data: a verifiable reward needs a reference answer that a program can check, and a set of
lathe's own keeps the examples and tests offline. Each answer is a one-line solution ending in
`\\boxed{N}`, the form the `accuracy` reward reads (the last `\\boxed{}`, else the last number).
The file sits in a folder of its own so that it stays out of the corpus the demo tokenizer is
trained on (the top-level files of data/).

    python scripts/make_arithmetic.py   # rewrites the file (the same rows every time)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 20261207
ROWS_PER_LANGUAGE = 200
OUT = Path(__file__).resolve().parents[1] / "data" / "lathe_arithmetic" / "lathe_arithmetic.json"

NAMES_EN = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Felix", "Grace", "Hiro", "Iris", "Jonas"]
NAMES_ZH = ["小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小伟"]
ITEMS_EN = ["apples", "pencils", "stickers", "marbles", "books", "cookies"]
ITEMS_ZH = ["个苹果", "支铅笔", "张贴纸", "颗弹珠", "本书", "块饼干"]  # each with its measure word

Problem = tuple[str, str, int]  # question, working, answer


def add(r: random.Random, zh: bool) -> Problem:
    a, b = r.randint(2, 90), r.randint(2, 90)
    if zh:
        name, item = r.choice(NAMES_ZH), r.choice(ITEMS_ZH)
        return f"{name}有{a}{item}，又买了{b}{item[0]}。{name}现在一共有多少{item}？", f"{a} + {b} = {a + b}", a + b
    name, item = r.choice(NAMES_EN), r.choice(ITEMS_EN)
    question = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
    return question, f"{a} + {b} = {a + b}", a + b


def subtract(r: random.Random, zh: bool) -> Problem:
    a = r.randint(20, 99)
    b = r.randint(1, a - 1)
    if zh:
        name, item = r.choice(NAMES_ZH), r.choice(ITEMS_ZH)
        return f"{name}有{a}{item}，送给朋友{b}{item[0]}。{name}还剩多少{item}？", f"{a} - {b} = {a - b}", a - b
    name, item = r.choice(NAMES_EN), r.choice(ITEMS_EN)
    return f"{name} has {a} {item} and gives {b} to a friend. How many {item} are left?", f"{a} - {b} = {a - b}", a - b


def multiply(r: random.Random, zh: bool) -> Problem:
    boxes, each = r.randint(2, 12), r.randint(2, 12)
    if zh:
        item = r.choice(ITEMS_ZH)
        question = f"一共有{boxes}个盒子，每个盒子里有{each}{item}。一共有多少{item}？"
        return question, f"{boxes} × {each} = {boxes * each}", boxes * each
    item = r.choice(ITEMS_EN)
    question = f"There are {boxes} boxes with {each} {item} in each box. How many {item} are there in total?"
    return question, f"{boxes} × {each} = {boxes * each}", boxes * each


def divide(r: random.Random, zh: bool) -> Problem:
    friends, each = r.randint(2, 9), r.randint(2, 12)
    total = friends * each
    if zh:
        name, item = r.choice(NAMES_ZH), r.choice(ITEMS_ZH)
        question = f"{name}把{total}{item}平均分给{friends}个朋友。每个朋友分到多少{item[0]}？"
        return question, f"{total} ÷ {friends} = {each}", each
    name, item = r.choice(NAMES_EN), r.choice(ITEMS_EN)
    question = f"{name} shares {total} {item} equally among {friends} friends. How many {item} does each friend get?"
    return question, f"{total} ÷ {friends} = {each}", each


def change(r: random.Random, zh: bool) -> Problem:
    price, count = r.randint(2, 9), r.randint(2, 9)
    paid = 100 if price * count > 50 else 50
    rest = paid - price * count
    working = f"{paid} - {price} × {count} = {rest}"
    if zh:
        name = r.choice(NAMES_ZH)
        return f"一支笔{price}元，{name}买了{count}支，付了{paid}元。应该找回多少元？", working, rest
    name = r.choice(NAMES_EN)
    question = (f"A pen costs {price} dollars. {name} buys {count} pens and pays with {paid} dollars. "
                f"How much change does {name} get?")
    return question, working, rest


KINDS: list[Callable[[random.Random, bool], Problem]] = [add, subtract, multiply, divide, change]


def rows(seed: int = SEED, per_language: int = ROWS_PER_LANGUAGE) -> list[dict]:
    r = random.Random(seed)
    out = []
    for zh in (False, True):
        for i in range(per_language):
            question, working, answer = KINDS[i % len(KINDS)](r, zh)
            solution = (f"{working}，所以答案是 \\boxed{{{answer}}}。" if zh
                        else f"{working}, so the answer is \\boxed{{{answer}}}.")
            out.append({"instruction": question, "output": solution, "answer": str(answer),
                        "language": "zh" if zh else "en"})
    r.shuffle(out)
    return out


if __name__ == "__main__":
    data = rows()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(data)} rows to {OUT}")
