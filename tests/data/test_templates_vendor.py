"""Templates added from the vendors' own chat templates, checked against those templates.

`../shared/tokenizers/*-TEMPLATE-ONLY` hold the vendors' jinja files without a vocabulary. Each is
rendered with jinja2 the way transformers renders a chat template (trim_blocks, lstrip_blocks,
loop controls, `raise_exception`, `strftime_now`, transformers' `tojson`) and compared with the
text lathe's registered template writes; for Qwen3.5 the ids are compared too, on the Qwen
vocabulary. Differences that lathe's slots cannot express are asserted here as they are, and
listed in docs/templates.md.
"""

from __future__ import annotations

import datetime
import json
from types import SimpleNamespace

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer

from lathe.data.formats import TOOL_RESPONSE_JOIN
from lathe.data.templates import get_template, to_openai_messages
from tests.conftest import SHARED

TOKENIZERS = SHARED / "tokenizers"
# The registered templates whose text this file checks against a vendor's template.
VENDOR_CHECKED = {"qwen3_5", "qwen3_5_nothink", "seed_oss", "minimax2", "granite4", "lfm2", "gemma4", "mistral_small"}
SYSTEM = "You are a terse pirate."
CHAT = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Write {content} literally."},
    {"role": "assistant", "content": "Sure: {content}."},
]
THINKING = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "<think>\nA greeting.\n</think>\n\nHello!"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nSum.\n</think>\n\n2+2 equals 4."},
]
HISTORY_WITHOUT_THOUGHTS = [dict(THINKING[0]), {"role": "assistant", "content": "Hello!"}, dict(THINKING[2])]
AGENT = [
    {"role": "user", "content": "Add 3 and 4, and tell me the time."},
    {"role": "function", "content": json.dumps([{"name": "add", "arguments": {"a": 3, "b": 4}},
                                                {"name": "now", "arguments": {}}])},
    {"role": "observation", "content": '{"result": 7}' + TOOL_RESPONSE_JOIN + '"12:00"'},
    {"role": "assistant", "content": "7; it is noon."},
]


def vendor_template(folder: str) -> str:
    path = TOKENIZERS / folder / "chat_template.jinja"
    if not path.is_file():
        pytest.skip(f"{path} not found (the shared/ folder next to the repo)")
    return path.read_text()


def render_vendor(folder: str, messages, system: str = "", bos: str = "", eos: str = "", **kwargs) -> str:
    """The vendor's template rendered as transformers renders it, for lathe-schema `messages`."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    conversation = to_openai_messages(messages, system)
    for message in conversation:  # vendors' templates take tool-call arguments as mappings
        for call in message.get("tool_calls") or []:
            if isinstance(call["function"]["arguments"], str):
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return env.from_string(vendor_template(folder)).render(
        messages=conversation, bos_token=bos, eos_token=eos, **kwargs
    )


def lathe_text(name: str, messages, system: str = "", bos: str = "", eos: str = "", **options) -> str:
    tpl = get_template(name).with_options(**options) if options else get_template(name)
    return tpl.render(SimpleNamespace(bos_token=bos, eos_token=eos), messages, system=system).text


def lathe_prompt(name: str, messages, system: str = "", bos: str = "", eos: str = "", **options) -> str:
    tpl = get_template(name).with_options(**options) if options else get_template(name)
    return tpl.render_prompt(SimpleNamespace(bos_token=bos, eos_token=eos), messages, system=system)


def answers(name: str, messages, system: str = "", **options) -> list[str]:
    tpl = get_template(name).with_options(**options) if options else get_template(name)
    rendering = tpl.render(SimpleNamespace(bos_token="", eos_token=""), messages, system=system)
    return [rendering.text[start:end] for start, end in rendering.answer_spans]


# --- Qwen3.5 --------------------------------------------------------------------------------------

QWEN35 = "qwen3.5-4b-TEMPLATE-ONLY"


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5_nothink"])
@pytest.mark.parametrize("system", ["", SYSTEM])
def test_qwen3_5_text(name, system):
    # lathe renders nothing after the final <|im_end|>; the vendor adds the newline that opens the next turn.
    assert lathe_text(name, CHAT, system) + "\n" == render_vendor(QWEN35, CHAT, system)
    assert lathe_text(name, THINKING[2:], system) + "\n" == render_vendor(QWEN35, THINKING[2:], system)
    assert answers(name, CHAT) == ["Hello! How can I help?<|im_end|>", "Sure: {content}.<|im_end|>"]


def test_qwen3_5_thinking_and_generation_prompts():
    # Earlier thoughts are dropped from a prompt, as Qwen3.5 writes it; the vendor's generation
    # prompt then opens the think block, which lathe leaves to the model (as for Qwen3-Thinking).
    vendor = render_vendor(QWEN35, THINKING[:3], SYSTEM, add_generation_prompt=True)
    assert lathe_prompt("qwen3_5", THINKING[:3], SYSTEM) + "<think>\n" == vendor
    assert lathe_prompt("qwen3_5", THINKING[:3], SYSTEM) == lathe_prompt("qwen3_5", HISTORY_WITHOUT_THOUGHTS, SYSTEM)
    # enable_thinking: false writes the same empty think block as the vendor's switch (lathe also
    # writes it, unlearned, before earlier answers without thoughts: each was generated after one).
    assert lathe_prompt("qwen3_5", THINKING[2:3], enable_thinking=False) == render_vendor(
        QWEN35, THINKING[2:3], add_generation_prompt=True, enable_thinking=False
    )
    empty = "<think>\n\n</think>\n\n"
    assert lathe_prompt("qwen3_5", THINKING[:3], enable_thinking=False) == render_vendor(
        QWEN35, THINKING[:3], add_generation_prompt=True, enable_thinking=False
    ).replace("assistant\nHello!", "assistant\n" + empty + "Hello!")
    # Training keeps the thoughts of the learned earlier answer (the vendor's text drops them).
    assert "A greeting." in lathe_text("qwen3_5", THINKING)
    assert "A greeting." not in render_vendor(QWEN35, THINKING)
    assert lathe_text("qwen3_5", THINKING, preserve_thinking=False).endswith(render_vendor(QWEN35, THINKING)[-60:-1])


def test_qwen3_5_ids_on_the_qwen_vocabulary():
    folder = TOKENIZERS / "qwen3-4b-thinking-2507-assembled"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tpl = get_template("qwen3_5")
    for messages, system in ((CHAT, ""), (CHAT, SYSTEM), (THINKING[2:], SYSTEM)):
        pairs = tpl.encode(tokenizer, messages, system=system)
        ids = [i for prompt, answer in pairs for i in prompt + answer]
        reference = tokenizer(render_vendor(QWEN35, messages, system), add_special_tokens=False)["input_ids"]
        assert reference == ids + tokenizer("\n", add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(pairs[-1][1]) == messages[-1]["content"] + "<|im_end|>"
    prompt = tpl.encode_prompt(tokenizer, THINKING[:3], system=SYSTEM)
    vendor = render_vendor(QWEN35, THINKING[:3], SYSTEM, add_generation_prompt=True)
    assert prompt + tokenizer("<think>\n", add_special_tokens=False)["input_ids"] == tokenizer(
        vendor, add_special_tokens=False
    )["input_ids"]


# --- Seed-OSS -------------------------------------------------------------------------------------

SEED = "seed-oss-TEMPLATE-ONLY"


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_seed_oss_text(system):
    assert lathe_text("seed_oss", CHAT, system) == render_vendor(SEED, CHAT, system)
    assert lathe_prompt("seed_oss", CHAT[:3], system) == render_vendor(SEED, CHAT[:3], system, add_generation_prompt=True)
    assert answers("seed_oss", CHAT) == ["Hello! How can I help?<seed:eos>", "Sure: {content}.<seed:eos>"]


def test_seed_oss_thoughts_are_kept_in_every_answer():
    # Seed-OSS takes thoughts as `reasoning_content` and writes them in <seed:think> tags in every
    # answer; lathe trains them written in the answer text the same way.
    thoughts = ["A greeting.", "Sum."]
    with_thoughts = [dict(m) for m in CHAT]
    vendor_messages = to_openai_messages(CHAT)
    for i, thought in zip((1, 3), thoughts):
        with_thoughts[i]["content"] = f"<seed:think>{thought}</seed:think>\n" + CHAT[i]["content"]
        vendor_messages[i]["reasoning_content"] = thought
    text = lathe_text("seed_oss", with_thoughts)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    assert text == env.from_string(vendor_template(SEED)).render(messages=vendor_messages)
    assert lathe_prompt("seed_oss", with_thoughts[:3]).count("<seed:think>") == 1


# --- MiniMax-M2 -----------------------------------------------------------------------------------

MINIMAX = "minimax-m2-TEMPLATE-ONLY"


def test_minimax2_text():
    assert lathe_text("minimax2", CHAT, SYSTEM) + "\n" == render_vendor(MINIMAX, CHAT, SYSTEM)
    # The default system prompt is M2.1's (LLaMA-Factory's); this M2 revision's is shorter.
    assert lathe_text("minimax2", CHAT, default_system="You are a helpful assistant.") + "\n" == render_vendor(
        MINIMAX, CHAT
    )
    assert "Your name is MiniMax-M2.1" in lathe_text("minimax2", CHAT)
    assert answers("minimax2", CHAT, SYSTEM) == ["Hello! How can I help?[e~[", "Sure: {content}.[e~["]


def test_minimax2_interleaved_thinking():
    # Thoughts after the last user turn are written; earlier ones are dropped from prompts, as the vendor does.
    assert lathe_text("minimax2", THINKING[2:], SYSTEM) + "\n" == render_vendor(MINIMAX, THINKING[2:], SYSTEM)
    vendor = render_vendor(MINIMAX, THINKING[:3], SYSTEM, add_generation_prompt=True)
    assert lathe_prompt("minimax2", THINKING[:3], SYSTEM) + "<think>\n" == vendor
    assert render_vendor(MINIMAX, THINKING[:3], SYSTEM, add_generation_prompt=True, enable_thinking=False) == (
        lathe_prompt("minimax2", THINKING[:3], SYSTEM)
    )


# --- Granite 4.0 ----------------------------------------------------------------------------------

GRANITE = "granite-4.0-TEMPLATE-ONLY"


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_granite4_text(system):
    assert lathe_text("granite4", CHAT, system) + "\n" == render_vendor(GRANITE, CHAT, system)
    assert lathe_text("granite4", THINKING, system) + "\n" == render_vendor(GRANITE, THINKING, system)
    assert lathe_prompt("granite4", CHAT[:3], system) == render_vendor(GRANITE, CHAT[:3], system,
                                                                       add_generation_prompt=True)


def test_granite4_tool_calls_and_results():
    """Calls and results match Granite 4's template (its tools preamble differs from the qwen format's)."""
    assert lathe_text("granite4", AGENT, SYSTEM) + "\n" == render_vendor(GRANITE, AGENT, SYSTEM)
    assert answers("granite4", AGENT, SYSTEM)[0] == (
        '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call>\n'
        '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call><|end_of_text|>'
    )


# --- LFM2 -----------------------------------------------------------------------------------------

LFM2 = "lfm2-8b-a1b-TEMPLATE-ONLY"


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_lfm2_text(system):
    bos = "<|startoftext|>"
    assert lathe_text("lfm2", CHAT, system, bos=bos) + "\n" == render_vendor(LFM2, CHAT, system, bos=bos)
    assert lathe_text("lfm2", THINKING, system, bos=bos) + "\n" == render_vendor(LFM2, THINKING, system, bos=bos)
    assert lathe_prompt("lfm2", CHAT[:3], system, bos=bos) == render_vendor(
        LFM2, CHAT[:3], system, bos=bos, add_generation_prompt=True
    )


# --- Gemma 4 --------------------------------------------------------------------------------------

GEMMA4 = "gemma-4-31b-it-TEMPLATE-ONLY"
GEMMA4_EMPTY_THOUGHT = "<|channel>thought\n<channel|>"


def gemma4_thoughts(messages):
    """`messages` with their <think> blocks in Gemma 4's thought-channel spelling (what the vendor's side reads)."""
    out = []
    for message in messages:
        content = message["content"]
        if "</think>" in content:
            thought, _, answer = content.partition("</think>")
            thought = thought.split("<think>")[-1].strip("\n")
            content = "<|channel>thought\n" + thought + "<channel|>" + answer.lstrip("\n")
        out.append({**message, "content": content})
    return out


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_gemma4_text_in_thinking_mode(system):
    # lathe's default (enable_thinking) is Gemma 4's thinking mode: <|think|> opens the system turn,
    # which is then written even without a system prompt.
    vendor = render_vendor(GEMMA4, CHAT, system, bos="<bos>", enable_thinking=True)
    assert vendor.startswith("<bos><|turn>system\n<|think|>" + system + "<turn|>\n")
    assert lathe_text("gemma4", CHAT, system, bos="<bos>") + "\n" == vendor
    assert answers("gemma4", CHAT) == ["Hello! How can I help?<turn|>", "Sure: {content}.<turn|>"]


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_gemma4_text_without_thinking(system):
    # enable_thinking: false is the vendor's default mode: no <|think|> (no system turn without a system
    # prompt); lathe also writes the empty thought channel, unlearned, before each answer without thoughts
    # (each was generated after one), where the vendor's text shows it only at the end of a prompt.
    vendor = render_vendor(GEMMA4, CHAT, system, bos="<bos>")
    text = lathe_text("gemma4", CHAT, system, bos="<bos>", enable_thinking=False)
    assert text.replace(GEMMA4_EMPTY_THOUGHT, "") + "\n" == vendor
    assert text.count("<|turn>model\n" + GEMMA4_EMPTY_THOUGHT) == 2 and "<|think|>" not in text
    assert answers("gemma4", CHAT, enable_thinking=False) == answers("gemma4", CHAT)


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_gemma4_generation_prompts_in_both_modes(system):
    # Thinking: the vendor's prompt ends at the model header, as lathe's does.
    for end in (1, 3):
        assert lathe_prompt("gemma4", CHAT[:end], system, bos="<bos>") == render_vendor(
            GEMMA4, CHAT[:end], system, bos="<bos>", add_generation_prompt=True, enable_thinking=True
        )
    # Without thinking its prompt ends in the empty thought channel, which lathe writes with enable_thinking: false.
    vendor = render_vendor(GEMMA4, CHAT[:3], system, bos="<bos>", add_generation_prompt=True)
    assert vendor.endswith("<|turn>model\n" + GEMMA4_EMPTY_THOUGHT)
    assert lathe_prompt("gemma4", CHAT[:1], system, bos="<bos>", enable_thinking=False) == render_vendor(
        GEMMA4, CHAT[:1], system, bos="<bos>", add_generation_prompt=True
    )
    prompt = lathe_prompt("gemma4", CHAT[:3], system, bos="<bos>", enable_thinking=False)
    assert prompt == vendor.replace("model\nHello!", "model\n" + GEMMA4_EMPTY_THOUGHT + "Hello!")


def test_gemma4_thoughts_are_written_as_its_thought_channel():
    # Canonical <think> thoughts become Gemma 4's channel, learned with the answer.
    assert answers("gemma4", THINKING) == ["<|channel>thought\nA greeting.<channel|>Hello!<turn|>",
                                           "<|channel>thought\nSum.<channel|>2+2 equals 4.<turn|>"]
    # Gemma 4's template strips the channel from every answer; lathe keeps thoughts in the history
    # it trains and prompts with (thoughts_in_history: keep), so only thought-free history matches.
    vendor = render_vendor(GEMMA4, gemma4_thoughts(THINKING[:3]), SYSTEM, bos="<bos>", add_generation_prompt=True,
                           enable_thinking=True)
    assert vendor == lathe_prompt("gemma4", HISTORY_WITHOUT_THOUGHTS, SYSTEM, bos="<bos>")
    assert "model\n<|channel>thought\nA greeting.<channel|>Hello!<turn|>" in lathe_prompt(
        "gemma4", THINKING[:3], SYSTEM, bos="<bos>")


# --- Mistral Small 3.1 ----------------------------------------------------------------------------

MISTRAL_SMALL = "mistral-small-3.1-TEMPLATE-ONLY"


def test_mistral_small_text_with_a_system_prompt():
    kwargs = {"bos": "<s>", "eos": "</s>"}
    assert lathe_text("mistral_small", CHAT, SYSTEM, **kwargs) == render_vendor(MISTRAL_SMALL, CHAT, SYSTEM, **kwargs)
    assert lathe_prompt("mistral_small", CHAT[:3], SYSTEM, **kwargs) == render_vendor(
        MISTRAL_SMALL, CHAT[:3], SYSTEM, add_generation_prompt=True, **kwargs
    )
    # Without one, Mistral's template writes its dated default system prompt; lathe writes none.
    assert "The current date is" in render_vendor(MISTRAL_SMALL, CHAT, **kwargs)
    assert lathe_text("mistral_small", CHAT, **kwargs).startswith("<s>[INST]Hi there[/INST]")
