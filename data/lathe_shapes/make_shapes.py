"""Writes lathe's own small multimodal data: images of coloured shapes, an SFT set about them, a
preference set (chosen / rejected answers) for DPO and the same answers labelled for KTO. Run from the repository root:

    python data/lathe_shapes/make_shapes.py

The images are drawn here (PIL), so the data ships with the project and needs no download.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}
SHAPES = ("circle", "square", "triangle")
SIZE = (96, 72)  # a small landscape image: every family's processor resizes it its own way


def draw(shape: str, color: str) -> Image.Image:
    image = Image.new("RGB", SIZE, (245, 245, 240))
    pen = ImageDraw.Draw(image)
    box = (24, 12, 72, 60)
    fill = COLORS[color]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(48, 12), (24, 60), (72, 60)], fill=fill)
    return image


def main() -> None:
    rng = random.Random(0)
    names = []
    for shape in SHAPES:
        for color in COLORS:
            name = f"images/{color}_{shape}.png"
            (HERE / "images").mkdir(exist_ok=True)
            draw(shape, color).save(HERE / name)
            names.append((name, shape, color))
    sft, dpo = [], []
    for name, shape, color in names:
        sft.append({"messages": [
            {"role": "user", "content": "<image>What shape is in the picture?"},
            {"role": "assistant", "content": f"A {shape}."},
            {"role": "user", "content": "And its colour?"},
            {"role": "assistant", "content": f"It is {color}."},
        ], "images": [name]})
        sft.append({"messages": [
            {"role": "user", "content": "Describe this image in a few words."},
            {"role": "assistant", "content": f"A {color} {shape} on a light background."},
        ], "images": [name]})  # no placeholder: it goes at the start of the first user turn
        other_name, other_shape, other_color = rng.choice([n for n in names if n[1] != shape and n[2] != color])
        sft.append({"messages": [
            {"role": "user", "content": "<image><image>Do these two pictures show the same shape?"},
            {"role": "assistant", "content": f"No: the first is a {shape}, the second a {other_shape}."},
        ], "images": [name, other_name]})
        wrong_shape = rng.choice([s for s in SHAPES if s != shape])
        dpo.append({"conversations": [{"from": "human", "value": "<image>What is in this picture?"}],
                    "chosen": {"from": "gpt", "value": f"A {color} {shape}."},
                    "rejected": {"from": "gpt", "value": f"A {color} {wrong_shape}."},
                    "images": [name]})
        wrong_color = rng.choice([c for c in COLORS if c != color])
        dpo.append({"conversations": [{"from": "human", "value": "<image>Which colour is the shape?"}],
                    "chosen": {"from": "gpt", "value": f"It is {color}."},
                    "rejected": {"from": "gpt", "value": f"It is {wrong_color}."},
                    "images": [name]})
    kto = [{"messages": [{"role": "user", "content": row["conversations"][0]["value"]},
                         {"role": "assistant", "content": row[side]["value"]}],
            "label": side == "chosen", "images": row["images"]}
           for row in dpo for side in ("chosen", "rejected")]  # each pair as two labelled answers
    (HERE / "lathe_shapes_kto.json").write_text(json.dumps(kto, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (HERE / "lathe_shapes_sft.json").write_text(json.dumps(sft, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (HERE / "lathe_shapes_dpo.json").write_text(json.dumps(dpo, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
