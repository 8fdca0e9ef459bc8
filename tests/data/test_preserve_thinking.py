"""`preserve_thinking`: reasoning templates drop the thoughts of earlier answers where those are context;
with preserve_thinking they keep them. Compared with the vendors' own templates where they have a switch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from lathe.data.processors.feedback import encode_feedback_batch
from lathe.data.processors.pairwise import encode_pairwise_batch
from lathe.data.processors.supervised import encode_supervised_batch
from lathe.data.sample import IGNORE_INDEX
from lathe.data.templates import get_template, resolve_template
from lathe.data.templates.tokenizer_template import TokenizerTemplate
from lathe.errors import LatheError
from tests.conftest import SHARED

TOKENIZERS = SHARED / "tokenizers"
THOUGHT = "<think>\nA greeting.\n</think>\n\nHello! How can I help?"
CHAT = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": THOUGHT},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nSimple arithmetic.\n</think>\n\n2+2 equals 4."},
]
OPENAI = [{"role": m["role"], "content": m["content"]} for m in CHAT]
# The history as Qwen3 writes it, with and without the earlier thoughts.
DROPPED = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
KEPT = f"<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n{THOUGHT}<|im_end|>\n"
NEXT = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def qwen3():
    path = TOKENIZERS / "qwen3-4b-thinking-2507-assembled"
    if not path.is_dir():
        pytest.skip(f"real tokenizers not found at {path}")
    return AutoTokenizer.from_pretrained(str(path))


def vendor(folder: str) -> str:
    return (TOKENIZERS / folder / "chat_template.jinja").read_text()


def test_prompt_drops_earlier_thoughts_like_qwen3_and_keeps_them_with_preserve_thinking(qwen3):
    tpl = get_template("qwen3")
    prompt = tpl.render_prompt(qwen3, CHAT[:3])
    assert prompt == DROPPED + NEXT
    # Qwen3's own (hybrid) template writes the same prompt.
    assert prompt == qwen3.apply_chat_template(OPENAI[:3], chat_template=vendor("qwen3-0.6b-hybrid-TEMPLATE-ONLY"),
                                               tokenize=False, add_generation_prompt=True)
    kept = tpl.with_options(preserve_thinking=True)
    assert kept.render_prompt(qwen3, CHAT[:3]) == KEPT + NEXT
    # The exported jinja does the same, and takes preserve_thinking when serving.
    for template, preserve, want in ((tpl, None, DROPPED), (kept, None, KEPT), (tpl, True, KEPT), (kept, False, DROPPED)):
        extra = {} if preserve is None else {"preserve_thinking": preserve}
        assert qwen3.apply_chat_template(OPENAI[:3], chat_template=template.to_jinja(), tokenize=False,
                                         add_generation_prompt=True, **extra) == want + NEXT


def test_sft_learns_earlier_thoughts_and_drops_them_where_they_are_context(qwen3):
    tpl = get_template("qwen3")
    kept = tpl.with_options(preserve_thinking=True)
    assert tpl.render(qwen3, CHAT).text.startswith(KEPT)  # learned answers: trained as written
    assert tpl.render(qwen3, CHAT, learn_history=False).text.startswith(DROPPED + NEXT)
    assert kept.render(qwen3, CHAT, learn_history=False).text.startswith(KEPT + NEXT)

    def sft(template, mask_history):
        batch = {"messages": [CHAT], "system": [""], "tools": [""]}
        args = SimpleNamespace(default_system=None, cutoff_len=1024, train_on_prompt=False, mask_history=mask_history)
        out = encode_supervised_batch(batch, template=template, tokenizer=qwen3, data_args=args)
        return qwen3.decode(out["input_ids"][0]), [t for t in out["labels"][0] if t != IGNORE_INDEX]

    text, labels = sft(tpl, mask_history=True)
    assert text.startswith(DROPPED + NEXT) and "A greeting." not in text
    assert qwen3.decode(labels) == "<think>\nSimple arithmetic.\n</think>\n\n2+2 equals 4.<|im_end|>"
    text, _ = sft(kept, mask_history=True)
    assert text.startswith(KEPT + NEXT)
    text, labels = sft(tpl, mask_history=False)
    assert "A greeting." in qwen3.decode(labels)


def test_preference_data_drops_earlier_thoughts_unless_preserved(qwen3):
    args = SimpleNamespace(default_system=None, cutoff_len=1024)
    pairs = {"messages": [CHAT[:3]], "system": [""], "tools": [""],
             "chosen": [[{"role": "assistant", "content": "4"}]], "rejected": [[{"role": "assistant", "content": "5"}]]}
    feedback = {"messages": [CHAT], "system": [""], "tools": [""], "kto_tag": [True]}
    for template, history in ((get_template("qwen3"), DROPPED), (get_template("qwen3").with_options(preserve_thinking=True), KEPT)):
        dpo = encode_pairwise_batch(pairs, template=template, tokenizer=qwen3, data_args=args)
        assert qwen3.decode(dpo["chosen_input_ids"][0]) == history + NEXT + "4<|im_end|>"
        kto = encode_feedback_batch(feedback, template=template, tokenizer=qwen3, data_args=args)
        assert qwen3.decode(kto["input_ids"][0]).startswith(history + NEXT)


def test_deepseekr1_drops_everywhere_and_keeps_with_preserve_thinking(qwen3):
    tpl = get_template("deepseekr1")
    assert "A greeting." not in tpl.render(qwen3, CHAT).text
    kept = tpl.with_options(preserve_thinking=True)
    assert THOUGHT in kept.render(qwen3, CHAT).text and THOUGHT in kept.render_prompt(qwen3, CHAT[:3])
    assert kept.render_prompt(qwen3, CHAT[:3]) == qwen3.apply_chat_template(
        OPENAI[:3], chat_template=kept.to_jinja(), tokenize=False, add_generation_prompt=True)
    # A template that never drops thoughts has nothing to preserve: the same template comes back.
    assert get_template("chatml").with_options(preserve_thinking=True) is get_template("chatml")


def test_tokenizer_template_uses_the_vendor_switch_or_refuses(qwen3):
    glm = AutoTokenizer.from_pretrained(str(TOKENIZERS / "qwen3-4b-thinking-2507-assembled"))
    glm.chat_template = vendor("glm-4.7-flash-TEMPLATE-ONLY")
    dropped = resolve_template(None, glm).render_prompt(glm, CHAT[:3])
    kept = resolve_template(None, glm, preserve_thinking=True)
    assert isinstance(kept, TokenizerTemplate) and kept.chat_template_kwargs == {"clear_thinking": False}
    assert "A greeting." not in dropped and "A greeting." in kept.render_prompt(glm, CHAT[:3])
    # Qwen3-Thinking's template drops earlier thoughts and has no switch: refused, not ignored.
    with pytest.raises(LatheError, match="preserve_thinking.*no switch"):
        resolve_template(None, qwen3, preserve_thinking=True)
