"""GLM-4.5/4.6 (`glm4_moe`), GLM-4.7 (`glm4_7`) and Ling (`bailing_v2`) against their vendors' templates.

These models open every answer that has no thoughts with an empty think block they write
themselves; lathe's `bare_answer_prefix` slot learns it. The vendors' jinja files in
`../shared/tokenizers/*-TEMPLATE-ONLY` are rendered as transformers renders them (the helpers of
`test_templates_vendor.py`) and compared with lathe's text; what the slots cannot express is
asserted as it is and listed in docs/templates.md.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer

from lathe.data.templates import Slots, SlotTemplate, ToolCall, get_template
from lathe.errors import LatheError
from tests.data.test_templates_vendor import (
    CHAT,
    SYSTEM,
    TOKENIZERS,
    answers,
    lathe_prompt,
    lathe_text,
    render_vendor,
)

# The registered templates whose text this file checks against a vendor's template.
GLM_CHECKED = {"glm4_moe", "glm4_7", "bailing_v2"}
GLM46, GLM47, LING = "glm-4.6-TEMPLATE-ONLY", "glm-4.7-flash-TEMPLATE-ONLY", "ling-3.0-flash-TEMPLATE-ONLY"
FOLDERS = {"glm4_moe": GLM46, "glm4_7": GLM47, "bailing_v2": LING}


def thinking(name: str) -> list[dict]:
    """CHAT with thoughts, written as each model writes them (its template normalises whitespace)."""
    think = {"glm4_moe": "<think>{}</think>\n{}", "glm4_7": "<think>{}</think>{}", "bailing_v2": "<think>{}</think>{}"}
    return [
        CHAT[0],
        {"role": "assistant", "content": think[name].format("A greeting.", "Hello!")},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": think[name].format("Sum.", "4.")},
    ]


# --- plain conversations: the empty think block is learned --------------------------------------------


@pytest.mark.parametrize("name", ["glm4_moe", "glm4_7"])
@pytest.mark.parametrize("system", ["", SYSTEM])
def test_glm_text(name, system):
    # efficient_eos: lathe writes eos after the last answer (empty here); the vendor writes nothing.
    assert lathe_text(name, CHAT, system) == render_vendor(FOLDERS[name], CHAT, system)
    # GLM-4.7's generation prompt opens the think block (GLM-4.6's does not); lathe leaves it to the
    # model, which learned to write it (or the empty block) itself.
    opened = "<think>" if name == "glm4_7" else ""
    assert lathe_prompt(name, CHAT[:3], system) + opened == render_vendor(FOLDERS[name], CHAT[:3], system,
                                                                          add_generation_prompt=True)


def test_learned_answers_open_with_the_empty_think_block():
    assert answers("glm4_moe", CHAT) == ["\n<think></think>\nHello! How can I help?<|user|>",
                                         "\n<think></think>\nSure: {content}."]
    assert answers("glm4_7", CHAT) == ["</think>Hello! How can I help?<|user|>", "</think>Sure: {content}."]
    assert answers("bailing_v2", CHAT) == ["<think></think>Hello! How can I help?<|role_end|>",
                                           "<think></think>Sure: {content}.<|role_end|>"]


def test_ling_text_and_its_thinking_system_line():
    # Without a system prompt Ling's template writes "detailed thinking on" as the system turn: lathe's default.
    assert lathe_text("bailing_v2", CHAT) == render_vendor(LING, CHAT)
    # A given system prompt gets that line appended by the vendor; lathe writes the prompt as given.
    assert lathe_text("bailing_v2", CHAT, SYSTEM + "\ndetailed thinking on") == render_vendor(LING, CHAT, SYSTEM)
    assert lathe_text("bailing_v2", CHAT, SYSTEM).startswith(f"<role>SYSTEM</role>{SYSTEM}<|role_end|>")
    # The vendor's generation prompt opens the think block; lathe leaves it to the model (learned).
    assert lathe_prompt("bailing_v2", CHAT[:3]) + "<think>" == render_vendor(LING, CHAT[:3], add_generation_prompt=True)


# --- tool conversations: the templates' own XML tool formats ------------------------------------------


@pytest.mark.parametrize("name", ["glm4_moe", "glm4_7"])
@pytest.mark.parametrize("system", ["", SYSTEM])
def test_glm_tool_conversation_matches_the_vendor(name, system):
    """Tools in their own system block, XML calls after the empty think block (learned up to the
    <|observation|> that ends them), each result in <tool_response> tags written once."""
    from tests.data.test_tools_xml import TOOLS, VENDOR_TOOLS
    from tests.data.test_templates_vendor import AGENT

    tpl = get_template(name)
    assert tpl.tool_format.name == name
    rendering = tpl.render(SimpleNamespace(bos_token="", eos_token=""), AGENT, system=system, tools=TOOLS)
    assert rendering.text == render_vendor(FOLDERS[name], AGENT, system, tools=VENDOR_TOOLS)
    call = rendering.text[slice(*rendering.answer_spans[0])]
    prefix = {"glm4_moe": "\n<think></think>\n<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>3</arg_value>",
              "glm4_7": "</think><tool_call>add<arg_key>a</arg_key><arg_value>3</arg_value>"}[name]
    assert call.startswith(prefix) and call.endswith("</tool_call><|observation|>")
    assert rendering.text.count("<tool_response>") == 2 and tpl.tool_format.parse(call) == [
        ToolCall("add", '{"a": 3, "b": 4}'), ToolCall("now", "{}")]


# --- thoughts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GLM_CHECKED))
def test_last_answer_thoughts_match(name):
    messages = thinking(name)
    assert lathe_text(name, messages[2:]) == render_vendor(FOLDERS[name], messages[2:])
    assert answers(name, messages[2:])[0].startswith(("\n<think>Sum.</think>\n4.", "<think>Sum.</think>4."))


@pytest.mark.parametrize("name", ["glm4_moe", "glm4_7"])
def test_glm_drops_earlier_thoughts_where_they_are_context(name):
    """Earlier thoughts become the empty block in prompts and unlearned history, as GLM writes them;
    where earlier answers are learned (plain SFT) their thoughts are trained."""
    messages, folder = thinking(name), FOLDERS[name]
    history_only = get_template(name).render(SimpleNamespace(bos_token="", eos_token=""), messages,
                                             learn_history=False).text
    assert history_only == render_vendor(folder, messages)
    assert "A greeting." in lathe_text(name, messages) and "A greeting." not in render_vendor(folder, messages)
    prompt, vendor = lathe_prompt(name, messages[:3]), render_vendor(folder, messages[:3], add_generation_prompt=True)
    if name == "glm4_7":  # GLM-4.7's generation prompt opens the think block; lathe leaves it to the model
        vendor = vendor.removesuffix("<think>")
    assert prompt == vendor and "A greeting." not in prompt
    assert "A greeting." in get_template(name).with_options(preserve_thinking=True).render_prompt(
        SimpleNamespace(bos_token="", eos_token=""), messages[:3])


def test_ling_keeps_thoughts_in_every_answer():
    messages = thinking("bailing_v2")
    assert lathe_text("bailing_v2", messages) == render_vendor(LING, messages)
    assert lathe_prompt("bailing_v2", messages[:3]) + "<think>" == render_vendor(LING, messages[:3],
                                                                                 add_generation_prompt=True)


# --- enable_thinking: false -----------------------------------------------------------------------------


def nothink(messages):
    return [dict(m, content=m["content"] + "/nothink") if m["role"] == "user" else m for m in messages]


def test_glm46_without_thinking():
    # The block moves into the prompt, unlearned; the text is GLM-4.6's, except that its template
    # also appends "/nothink" to each user turn, which lathe's slots do not write.
    vendor = render_vendor(GLM46, CHAT, SYSTEM, enable_thinking=False)
    assert lathe_text("glm4_moe", nothink(CHAT), SYSTEM, enable_thinking=False) == vendor
    assert lathe_text("glm4_moe", CHAT, SYSTEM, enable_thinking=False) == vendor.replace("/nothink", "")
    assert answers("glm4_moe", CHAT, enable_thinking=False) == ["\nHello! How can I help?<|user|>",
                                                                "\nSure: {content}."]
    assert lathe_prompt("glm4_moe", nothink(CHAT[:3]), enable_thinking=False) == render_vendor(
        GLM46, CHAT[:3], add_generation_prompt=True, enable_thinking=False
    )


def test_glm47_without_thinking():
    assert lathe_text("glm4_7", CHAT, enable_thinking=False) == render_vendor(GLM47, CHAT, enable_thinking=False)
    assert answers("glm4_7", CHAT, enable_thinking=False) == ["Hello! How can I help?<|user|>", "Sure: {content}."]
    assert lathe_prompt("glm4_7", CHAT[:3], enable_thinking=False) == render_vendor(
        GLM47, CHAT[:3], add_generation_prompt=True, enable_thinking=False
    )


def test_ling_without_thinking_needs_its_system_line():
    # Ling's switch is the system line "detailed thinking off"; lathe's is default_system (set it with the option).
    options = {"enable_thinking": False, "default_system": "detailed thinking off"}
    assert lathe_text("bailing_v2", CHAT, **options) == render_vendor(LING, CHAT, enable_thinking=False)
    assert answers("bailing_v2", CHAT, **options) == ["Hello! How can I help?<|role_end|>",
                                                      "Sure: {content}.<|role_end|>"]
    assert lathe_prompt("bailing_v2", CHAT[:3], **options) == render_vendor(
        LING, CHAT[:3], add_generation_prompt=True, enable_thinking=False
    )


# --- the slot itself, the export, the vocabulary ----------------------------------------------------------


def test_bare_answer_prefix_is_learned_only_before_answers_without_thoughts():
    tpl = SlotTemplate(Slots(name="x", user="U:{content}\nA:", assistant="{content}</s>",
                             bare_answer_prefix="<think></think>", empty_thought="<e>"))
    messages = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "<think>t</think>a2"}]
    rendering = tpl.render(SimpleNamespace(bos_token="", eos_token=""), messages)
    assert rendering.text == "U:q1\nA:<think></think>a1</s>U:q2\nA:<think>t</think>a2</s>"
    assert [rendering.text[s:e] for s, e in rendering.answer_spans] == ["<think></think>a1</s>",
                                                                        "<think>t</think>a2</s>"]
    off = tpl.with_options(enable_thinking=False).render(SimpleNamespace(bos_token="", eos_token=""), messages)
    assert off.text == "U:q1\nA:<e>a1</s>U:q2\nA:<think>t</think>a2</s>"
    assert [off.text[s:e] for s, e in off.answer_spans] == ["a1</s>", "<think>t</think>a2</s>"]
    with pytest.raises(LatheError, match="bare_answer_prefix"):
        Slots(name="x", bare_answer_prefix="{content}")


@pytest.mark.parametrize("name", sorted(GLM_CHECKED))
@pytest.mark.parametrize("enable_thinking", [True, False])
def test_exported_jinja_renders_the_vendor_text(name, enable_thinking):
    """The template saved with the model (to_jinja) switches the empty block as the vendor's does."""
    chat = nothink(CHAT) if name == "glm4_moe" and not enable_thinking else CHAT  # GLM-4.6's /nothink
    system = "detailed thinking off" if name == "bailing_v2" and not enable_thinking else ""  # Ling's switch
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user" if m["role"] == "user" else "assistant", "content": m["content"]} for m in chat
    ]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    exported = env.from_string(get_template(name).to_jinja()).render(
        messages=messages, enable_thinking=enable_thinking, bos_token="", eos_token=""
    )
    assert exported == render_vendor(FOLDERS[name], CHAT, enable_thinking=enable_thinking)


def test_answers_start_at_a_token_boundary_without_thinking():
    """With thinking off the block ends the prompt: it must be whole tokens, apart from the answer."""
    folder = TOKENIZERS / "qwen2-instruct-boundless"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    for name in sorted(GLM_CHECKED):
        tpl = get_template(name).with_options(enable_thinking=False)
        tpl.fix_tokenizer(tokenizer)
        pairs = tpl.encode(tokenizer, CHAT)
        text = tpl.render(tokenizer, CHAT).text
        assert [i for p, a in pairs for i in p + a] == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(pairs[0][1]).startswith(("\nHello!", "Hello!"))
        assert tokenizer.decode(pairs[0][0]).endswith(("<think></think>", "</think>"))


def test_llama_factory_settings():
    """Names, stop words and efficient_eos as LLaMA-Factory's (bailing_v2: see docs/templates.md)."""
    for name in ("glm4_moe", "glm4_7"):
        tpl = get_template(name)
        assert tpl.efficient_eos and tpl.stop_words == ["<|user|>", "<|observation|>"] and tpl.reasoning
    ling = get_template("bailing_v2")
    # LLaMA-Factory marks it efficient_eos and appends eos after <|role_end|>; lathe stops at <|role_end|>.
    assert not ling.efficient_eos and ling.stop_words == ["<|role_end|>", "<|endoftext|>"] and not ling.reasoning
