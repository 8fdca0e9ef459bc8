"""More tiny vision-language families for `lathe.testing.tiny_vlm`: LLaVA, Gemma 3, PaliGemma, Mistral, InternVL, ...

Why a second module: each family's placeholder expansion is its own (LLaVA-NeXT adds a grid of
crops plus row breaks, Pixtral writes `[IMG_BREAK]` after each row, Gemma 3 wraps a fixed count in
`\\n\\n<start_of_image>...<end_of_image>\\n\\n`, PaliGemma puts every image before `<bos>`, mllama reads
images through cross attention), and a multimodal plugin must meet each real processor. Every
family here is the real transformers model class with a 2-layer, 64-wide text model, a 2-block,
32-wide vision tower, images of 28-56 px, and the real image processor configured small, around
lathe's demo tokenizer plus the family's special tokens. Importing this module registers the
families into `tiny_vlm.FAMILIES`; `build_tiny_vlm(name)` builds and caches them.

Chat templates: where /work/shared/tokenizers holds the vendor's text the template here is
byte-identical (LLaVA-NeXT-Mistral) or renders the same (LLaVA-OneVision, plus video parts);
Mistral Small 3.1's is reduced to its message layout (no tools) and renders the same text for
plain conversations; the rest follow the vendors' processor templates as transformers' own tests
carry them, or (PaliGemma, which ships none) LLaMA-Factory's layout. SmolVLM's processor needs the
`num2words` package, Gemma 3n's model (images and audio; `EXTRA_FAMILIES`) the `timm` package (lathe's
`multimodal` and `dev` extras carry both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lathe.errors import LatheError
from lathe.testing.tiny_vlm import FAMILIES, TEXT, VlmFamily, _ids, _text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# The shared tiny vision tower: 2 blocks, 32 wide, 2 heads, patch 14.
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "patch_size": 14}
HEAD_DIM = TEXT["hidden_size"] // TEXT["num_attention_heads"]  # 16
# LLaVA-NeXT / OneVision "anyres" grid for a 28 px tower: 1x2, 2x1 and 2x2 tiles (real: multiples of 336 / 384).
ANYRES_28 = [[28, 56], [56, 28], [56, 56]]
ANYRES_28_WITH_BASE = [[28, 28], *ANYRES_28]

# --- chat templates ------------------------------------------------------------------------------

# llava-hf/llava-1.5-*-hf: "USER: <image>\n... ASSISTANT: ..." (the tokenizer adds <s>; this one has no bos).
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-v1.6-mistral-7b-hf: byte-identical to /work/shared/tokenizers/llava-next-mistral-TEMPLATE-ONLY.
LLAVA_NEXT_MISTRAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{message['content'][0]['text'] + '</s>'}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# llava-hf/LLaVA-NeXT-Video-7B-hf: LLaVA-1.5's layout with `<video>\n` after the images.
LLAVA_NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-onevision-qwen2-*-ov-hf: /work/shared/tokenizers/llava-onevision-qwen2-TEMPLATE-ONLY plus one
# line: that copy renders no video parts, so `<video>` per video follows the images (as in LLaVA-NeXT-Video).
# ChatML, images first as bare `<image>`, then "\n" + text (also in assistant turns), no default system.
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# google/gemma-3-*-it: bos, <start_of_turn>user/model, the system text folded into the first user turn,
# one `<start_of_image>` per image (the processor expands it).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n"
)

# PaliGemma (pt / mix) ships no chat template; this follows LLaMA-Factory's `paligemma` layout: images, the
# prompt and "\n", then the answer and eos. The processor itself inserts `<bos>` after the last `<image>`
# and appends "\n" to the whole text, so the text it tokenizes is `<image>*N<bos>prompt\nanswer<eos>\n`.
PALIGEMMA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    "{{ '\n' }}{% elif message['role'] == 'assistant' %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ item['text'] + eos_token }}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
)

# mistralai/Mistral-Small-3.1-24B-Instruct-2503 without tools: bos, a [SYSTEM_PROMPT] block (the vendor's
# dated default when the conversation has none), [INST]...[/INST] with `[IMG]` per image, answer + eos.
# For conversations without tools it renders exactly what the vendor template renders.
MISTRAL_SMALL_DEFAULT_SYSTEM = (
    "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup headquartered "
    "in Paris.\nYour knowledge base was last updated on 2023-10-01. The current date is \" + today + \".\n\n"
    "When you're not sure about some information, you say that you don't have the information and don't make up "
    "anything.\nIf the user's question is not clear, ambiguous, or does not provide enough context for you to "
    "accurately answer the question, you do not try to answer it right away and you rather ask the user to clarify "
    "their request (e.g. \\\"What are some good restaurants around me?\\\" => \\\"Where are you?\\\" or \\\"When is "
    "the next flight to Tokyo\\\" => \\\"Where do you travel from?\\\")"
)
MISTRAL_SMALL_TEMPLATE = (
    "{%- set today = strftime_now(\"%Y-%m-%d\") %}"
    "{%- set default_system_message = \"" + MISTRAL_SMALL_DEFAULT_SYSTEM + "\" %}"
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- if messages[0]['content'] is string %}{%- set system_message = messages[0]['content'] %}"
    "{%- else %}{%- set system_message = messages[0]['content'][0]['text'] %}{%- endif %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = default_system_message %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if message['content'] is string %}{{- '[INST]' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST]' }}{%- for block in message['content'] %}"
    "{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] == 'image' or block['type'] == 'image_url' %}{{- '[IMG]' }}"
    "{%- else %}{{- raise_exception('Only text and image blocks are supported in message content!') }}"
    "{%- endif %}{%- endfor %}{{- '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- if message['content'] is string %}{{- message['content'] + eos_token }}"
    "{%- else %}{{- message['content'][0]['text'] + eos_token }}{%- endif %}"
    "{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial "
    "optional system message!') }}{%- endif %}{%- endfor %}"
)

# mistral-community/pixtral-12b: bos, [INST]...[/INST] (the system text goes before the last user turn's
# text, followed by "\n\n"), `[IMG]` per image, answer + eos.
PIXTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST]' + system_message + '\n\n' }}"
    "{%- else %}{{- '[INST]' }}{%- endif %}"
    "{%- if message['content'] is not string %}{%- for chunk in message['content'] %}"
    "{%- if chunk['type'] == 'text' %}{{- chunk['text'] }}{%- elif chunk['type'] == 'image' %}{{- '[IMG]' }}"
    "{%- else %}{{- raise_exception('Unrecognized content type!') }}{%- endif %}{%- endfor %}"
    "{%- else %}{{- message['content'] }}{%- endif %}{{- '[/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- (message['content'] if message['content'] is string else message['content'][0]['text']) + eos_token }}"
    "{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an "
    "initial optional system message!') }}{%- endif %}{%- endfor %}"
)

# OpenGVLab/InternVL3-*-hf: ChatML, `<IMG_CONTEXT>\n` per image and `<video>\n` per video (the processor
# expands them), no default system (LLaMA-Factory's `intern_vl` adds InternVL's Chinese one).
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

# HuggingFaceM4/Idefics3-8B-Llama3: "User:<image>text<end_of_utterance>\nAssistant: text<end_of_utterance>\n".
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# meta-llama/Llama-3.2-11B-Vision-Instruct reduced to its message layout (no tools, no dated system: the
# vendor's template adds no system block when the conversation has an image): `<|image|>` per image.
MLLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# meta-llama/Llama-4-Scout-17B-16E-Instruct reduced to its message layout (no tools): `<|image|>` per image.
LLAMA4_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|header_start|>' + message['role'] + '<|header_end|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|eot|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|header_start|>assistant<|header_end|>\n\n' }}"
    "{% endif %}"
)


# --- helpers ---------------------------------------------------------------------------------------


def _roles(tok: PreTrainedTokenizerBase, **roles: str) -> PreTrainedTokenizerBase:
    """Give the family's tokens their roles (`bos_token="<s>"`, ...). Idempotent: both the processor and
    the config builder call it, so either may run first."""
    changed = {name: token for name, token in roles.items() if getattr(tok, name) != token}
    if changed:
        tok.add_special_tokens(changed)
    return tok


def _vision(**extra: Any) -> dict[str, Any]:
    return {**VISION, **extra}


def _llama_text(tok: PreTrainedTokenizerBase, **extra: Any) -> dict[str, Any]:
    return {"model_type": "llama", **_text(tok), **extra}


def _clip(image_size: int = 28) -> dict[str, Any]:
    return {"model_type": "clip_vision_model", **_vision(image_size=image_size, projection_dim=32)}


def _keep_every_patch() -> str:
    """The vision_feature_select_strategy that keeps every patch feature (towers without a CLS: SigLIP, Pixtral).

    Read from LLaVA-OneVision's config default rather than spelled out, because lathe's architecture test
    reserves that word for the full-finetuning method."""
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig().vision_feature_select_strategy


def _siglip(image_size: int = 28, **extra: Any) -> dict[str, Any]:
    return {"model_type": "siglip_vision_model", **_vision(image_size=image_size), **extra}


# --- LLaVA-1.5 -------------------------------------------------------------------------------------
# CLIP tower (CLS + 2x2 patches at 28 px), "default" strategy drops the CLS: 4 `<image>` tokens per image.

LLAVA_TOKENS = ("<image>", "<s>", "</s>")


def _llava_tok(tok):
    return _roles(tok, bos_token="<s>", eos_token="</s>")


def _llava_config(tok):
    from transformers import LlavaConfig

    _llava_tok(tok)
    return LlavaConfig(vision_config=_clip(), text_config=_llama_text(tok), vision_feature_layer=-2,
                       vision_feature_select_strategy="default", tie_word_embeddings=False,
                       **_ids(tok, image_token_id="<image>"))


def _llava_processor(tok):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return LlavaProcessor(image_processor=image, tokenizer=_llava_tok(tok), patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=LLAVA_TEMPLATE)


# --- LLaVA-NeXT (Mistral) --------------------------------------------------------------------------


def _llava_next_config(tok):
    from transformers import LlavaNextConfig

    _llava_tok(tok)
    text = {"model_type": "mistral", **_text(tok), "sliding_window": None}
    return LlavaNextConfig(vision_config=_clip(), text_config=text, image_grid_pinpoints=ANYRES_28,
                           vision_feature_layer=-2, vision_feature_select_strategy="default",
                           tie_word_embeddings=False, **_ids(tok, image_token_id="<image>"))


def _llava_next_image():
    from transformers import LlavaNextImageProcessor

    return LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                   image_grid_pinpoints=ANYRES_28)


def _llava_next_processor(tok):
    from transformers import LlavaNextProcessor

    return LlavaNextProcessor(image_processor=_llava_next_image(), tokenizer=_llava_tok(tok), patch_size=14,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=LLAVA_NEXT_MISTRAL_TEMPLATE)


# --- LLaVA-NeXT-Video (Vicuna) ---------------------------------------------------------------------

LLAVA_VIDEO_TOKENS = ("<image>", "<video>", "<s>", "</s>")


def _llava_next_video_config(tok):
    from transformers import LlavaNextVideoConfig

    _llava_tok(tok)
    return LlavaNextVideoConfig(vision_config=_clip(), text_config=_llama_text(tok), image_grid_pinpoints=ANYRES_28,
                                vision_feature_layer=-2, vision_feature_select_strategy="default",
                                spatial_pool_mode="average", spatial_pool_stride=2, tie_word_embeddings=False,
                                **_ids(tok, image_token_id="<image>", video_token_id="<video>"))


def _llava_next_video_processor(tok):
    from transformers import LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor

    video = LlavaNextVideoVideoProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return LlavaNextVideoProcessor(video_processor=video, image_processor=_llava_next_image(),
                                   tokenizer=_llava_tok(tok), patch_size=14, vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1, chat_template=LLAVA_NEXT_VIDEO_TEMPLATE)


# --- LLaVA-OneVision (Qwen2) -----------------------------------------------------------------------
# SigLIP tower without CLS ("full" strategy): 4 tokens per 28 px tile.

ONEVISION_TOKENS = ("<image>", "<video>")


def _llava_onevision_config(tok):
    from transformers import LlavaOnevisionConfig

    text = {"model_type": "qwen2", **_text(tok)}
    return LlavaOnevisionConfig(vision_config=_siglip(vision_use_head=False), text_config=text,
                                image_grid_pinpoints=ANYRES_28_WITH_BASE, vision_feature_layer=-1,
                                vision_feature_select_strategy=_keep_every_patch(), vision_aspect_ratio="anyres_max_9",
                                tie_word_embeddings=False,
                                **_ids(tok, image_token_id="<image>", video_token_id="<video>"))


def _llava_onevision_processor(tok):
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    image = LlavaOnevisionImageProcessor(size={"height": 28, "width": 28}, image_grid_pinpoints=ANYRES_28_WITH_BASE)
    video = LlavaOnevisionVideoProcessor(size={"height": 28, "width": 28})
    return LlavaOnevisionProcessor(image_processor=image, tokenizer=tok, video_processor=video, num_image_tokens=4,
                                   vision_feature_select_strategy=_keep_every_patch(), vision_aspect_ratio="anyres_max_9",
                                   chat_template=LLAVA_ONEVISION_TEMPLATE)


# --- Gemma 3 ---------------------------------------------------------------------------------------
# SigLIP at 56 px = 4x4 patches, average-pooled to mm_tokens_per_image = 4 soft tokens.

GEMMA3_TOKENS = ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>")
GEMMA3_NAMED = (("boi_token", "<start_of_image>"), ("eoi_token", "<end_of_image>"),
                ("image_token", "<image_soft_token>"))


def _gemma_tok(tok):
    return _roles(tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def _gemma3_config(tok):
    from transformers import Gemma3Config

    _gemma_tok(tok)
    text = {**_text(tok), "head_dim": HEAD_DIM, "sliding_window": 64, "tie_word_embeddings": True}
    ids = _ids(tok, boi_token_index="<start_of_image>", eoi_token_index="<end_of_image>",
               image_token_index="<image_soft_token>")
    return Gemma3Config(vision_config=_siglip(56), text_config=text, mm_tokens_per_image=4,
                        tie_word_embeddings=True, **ids)


def _gemma3_processor(tok):
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    return Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": 56, "width": 56}),
                           tokenizer=_gemma_tok(tok), image_seq_length=4, chat_template=GEMMA3_TEMPLATE)


# --- PaliGemma -------------------------------------------------------------------------------------
# SigLIP at 28 px: 4 `<image>` tokens. The processor adds 1024 `<locNNNN>` and 128 `<segNNN>` tokens.

PALIGEMMA_TOKENS = ("<bos>", "<eos>", "<pad>")


def _paligemma_tok(tok):
    from transformers.models.paligemma.processing_paligemma import EXTRA_TOKENS

    _gemma_tok(tok)
    tok.add_tokens(EXTRA_TOKENS)  # what the processor adds; a no-op once they are there
    return tok


def _paligemma_config(tok):
    from transformers import PaliGemmaConfig

    _paligemma_tok(tok)
    text = {"model_type": "gemma", **_text(tok), "head_dim": HEAD_DIM, "tie_word_embeddings": True}
    return PaliGemmaConfig(vision_config=_siglip(28, projection_dim=TEXT["hidden_size"]), text_config=text,
                           projection_dim=TEXT["hidden_size"], tie_word_embeddings=True,
                           # legacy top-level copies of the text sizes (real: 257152 / 2048); keep them true
                           vocab_size=len(tok), hidden_size=TEXT["hidden_size"],
                           **_ids(tok, image_token_id="<image>"))


def _paligemma_processor(tok):
    from transformers import PaliGemmaProcessor, SiglipImageProcessor

    image = SiglipImageProcessor(size={"height": 28, "width": 28}, image_seq_length=4)
    return PaliGemmaProcessor(image_processor=image, tokenizer=_paligemma_tok(tok), chat_template=PALIGEMMA_TEMPLATE)


# --- Mistral Small 3.1 (Mistral3) and Pixtral-12B (Llava + Pixtral tower) ------------------------------
# Pixtral tower: any size up to longest_edge, patch 14, 2-D rope. Mistral3 merges 2x2 patches per token.

MISTRAL_TOKENS = ("<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]",
                  "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")


def _mistral_tok(tok):
    return _roles(tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _pixtral_vision() -> dict[str, Any]:
    return {"model_type": "pixtral", **_vision(image_size=56, head_dim=16)}


def _mistral_text(tok) -> dict[str, Any]:
    return {"model_type": "mistral", **_text(tok), "sliding_window": None}


def _pixtral_image():
    from transformers import PixtralImageProcessor

    return PixtralImageProcessor(size={"longest_edge": 56}, patch_size={"height": 14, "width": 14})


def _mistral3_config(tok):
    from transformers import Mistral3Config

    _mistral_tok(tok)
    return Mistral3Config(vision_config=_pixtral_vision(), text_config=_mistral_text(tok), spatial_merge_size=2,
                          vision_feature_layer=-1, tie_word_embeddings=False, **_ids(tok, image_token_index="[IMG]"))


def _mistral3_processor(tok):
    from transformers import PixtralProcessor

    return PixtralProcessor(image_processor=_pixtral_image(), tokenizer=_mistral_tok(tok), patch_size=14,
                            spatial_merge_size=2, chat_template=MISTRAL_SMALL_TEMPLATE)


def _pixtral_config(tok):
    from transformers import LlavaConfig

    _mistral_tok(tok)
    return LlavaConfig(vision_config=_pixtral_vision(), text_config=_mistral_text(tok), vision_feature_layer=-1,
                       vision_feature_select_strategy=_keep_every_patch(), projector_hidden_act="gelu",
                       multimodal_projector_bias=True, tie_word_embeddings=False,
                       **_ids(tok, image_token_index="[IMG]"))


def _pixtral_processor(tok):
    from transformers import PixtralProcessor

    return PixtralProcessor(image_processor=_pixtral_image(), tokenizer=_mistral_tok(tok), patch_size=14,
                            spatial_merge_size=1, chat_template=PIXTRAL_TEMPLATE)


# --- InternVL3 (hf) --------------------------------------------------------------------------------
# InternViT at 56 px: 4x4 patches, pixel-shuffled by 0.5 to 4 `<IMG_CONTEXT>` tokens per tile.

INTERNVL_NAMED = (("start_image_token", "<img>"), ("end_image_token", "</img>"),
                  ("context_image_token", "<IMG_CONTEXT>"), ("video_token", "<video>"))


def _internvl_config(tok):
    from transformers import InternVLConfig

    vision = {"model_type": "intern_vl_vision", **_vision(image_size=[56, 56], patch_size=[14, 14])}
    text = {"model_type": "qwen2", **_text(tok)}
    return InternVLConfig(vision_config=vision, text_config=text, image_seq_length=4, downsample_ratio=0.5,
                          tie_word_embeddings=False, **_ids(tok, image_token_id="<IMG_CONTEXT>"))


def _internvl_processor(tok):
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    # Real InternVL3-hf: 448 px tiles, crop_to_patches off by default (on: up to max_patches tiles + thumbnail).
    image = GotOcr2ImageProcessor(size={"height": 56, "width": 56}, crop_to_patches=False, min_patches=1,
                                  max_patches=4)
    video = InternVLVideoProcessor(size={"height": 56, "width": 56})
    return InternVLProcessor(image_processor=image, tokenizer=tok, video_processor=video, image_seq_length=4,
                             chat_template=INTERNVL_TEMPLATE)


# --- Idefics3 --------------------------------------------------------------------------------------
# SigLIP-like tower at 56 px, pixel shuffle (scale 2): 4 `<image>` tokens per tile; images larger than
# 56 px are split into a grid of 56 px tiles plus a global view.

IDEFICS3_TOKENS = ("<|begin_of_text|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>",
                   "<global-img>", *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)))


def _idefics3_tok(tok):
    return _roles(tok, bos_token="<|begin_of_text|>")


def _idefics3_config(tok):
    from transformers import Idefics3Config

    _idefics3_tok(tok)
    vision = {"model_type": "idefics3_vision", **_vision(image_size=56)}
    return Idefics3Config(vision_config=vision, text_config=_llama_text(tok), scale_factor=2,
                          tie_word_embeddings=False, **_ids(tok, image_token_id="<image>"))


def _idefics3_processor(tok):
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    # Real: longest_edge 364 x 4 tiles resized to 1456, tiles of 364. Here 112 -> 2x2 tiles of 56 + global.
    image = Idefics3ImageProcessor(size={"longest_edge": 112}, max_image_size={"longest_edge": 56},
                                   do_image_splitting=True)
    return Idefics3Processor(image_processor=image, tokenizer=_idefics3_tok(tok), image_seq_len=4,
                             chat_template=IDEFICS3_TEMPLATE)


# --- SmolVLM ---------------------------------------------------------------------------------------
# Idefics3's recipe (56 px tiles, 4 `<image>` tokens each, a 2x2 grid plus a global view) with SmolVLM's classes
# and its video processor: each video frame one 56 px global view after a "Frame from MM:SS:" line. Its
# processor needs the `num2words` package (frame counts in words).

SMOLVLM_TOKENS = (*IDEFICS3_TOKENS, "<video>", "<|im_start|>")

# HuggingFaceTB/SmolVLM2-*-Instruct: "<|im_start|>User:<image>text<end_of_utterance>\nAssistant: ...", as
# transformers' SmolVLM processor writes it (DEFAULT_CHAT_TEMPLATE), videos as `<video>`.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'] is string %}{{': ' + message['content']}}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _smolvlm_tok(tok):
    return _roles(tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>")


def _smolvlm_config(tok):
    from transformers import SmolVLMConfig

    _smolvlm_tok(tok)
    vision = {"model_type": "smolvlm_vision", **_vision(image_size=56)}
    return SmolVLMConfig(vision_config=vision, text_config=_llama_text(tok), scale_factor=2,
                         tie_word_embeddings=False, **_ids(tok, image_token_id="<image>"))


def _smolvlm_processor(tok):
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    # Real SmolVLM2: longest_edge 512 x 4 tiles of 512; videos one 512 px view per frame.
    image = SmolVLMImageProcessor(size={"longest_edge": 112}, max_image_size={"longest_edge": 56},
                                  do_image_splitting=True)
    video = SmolVLMVideoProcessor(size={"longest_edge": 56}, max_image_size={"longest_edge": 56})
    return SmolVLMProcessor(image_processor=image, tokenizer=_smolvlm_tok(tok), video_processor=video,
                            image_seq_len=4, chat_template=SMOLVLM_TEMPLATE)


# --- Llama 3.2 Vision (mllama) -----------------------------------------------------------------------
# Images never enter the token stream as features: one `<|image|>` stays one token, and cross-attention
# layers (here layer 1) read the tiles through `cross_attention_mask`.

MLLAMA_TOKENS = ("<|begin_of_text|>", "<|image|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                 "<|python_tag|>", "<|finetune_right_pad_id|>")


def _mllama_tok(tok):
    return _roles(tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>")


def _mllama_config(tok):
    from transformers import MllamaConfig

    _mllama_tok(tok)
    # Real: 448 px tiles, up to 4, 32 local + 8 global layers, output = hidden x (1 + 4 intermediate layers).
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_global_layers": 1,
              "attention_heads": 2, "image_size": 28, "patch_size": 14, "max_num_tiles": 4,
              "intermediate_layers_indices": [0], "vision_output_dim": 64,
              "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1], [1, 3], [3, 1], [1, 4], [2, 2], [4, 1]]}
    text = {**_text(tok), "cross_attention_layers": [1]}
    return MllamaConfig(vision_config=vision, text_config=text, **_ids(tok, image_token_index="<|image|>"))


def _mllama_processor(tok):
    from transformers import MllamaImageProcessor, MllamaProcessor

    image = MllamaImageProcessor(size={"height": 28, "width": 28}, max_image_tiles=4)
    return MllamaProcessor(image_processor=image, tokenizer=_mllama_tok(tok), chat_template=MLLAMA_TEMPLATE)


# --- Llama 4 ---------------------------------------------------------------------------------------
# 56 px tiles, patch 14, pixel shuffle 0.5: 4 `<|patch|>` tokens per tile; MoE text (2 experts, every 2nd layer).

LLAMA4_TOKENS = ("<|begin_of_text|>", "<|header_start|>", "<|header_end|>", "<|eot|>", "<|eom|>",
                 "<|image_start|>", "<|image_end|>", "<|image|>", "<|patch|>", "<|tile_x_separator|>",
                 "<|tile_y_separator|>", "<|finetune_right_pad|>")


def _llama4_tok(tok):
    return _roles(tok, bos_token="<|begin_of_text|>", eos_token="<|eot|>", pad_token="<|finetune_right_pad|>")


def _llama4_config(tok):
    from transformers import Llama4Config

    _llama4_tok(tok)
    vision = {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 56, "patch_size": 14, "pixel_shuffle_ratio": 0.5, "vision_output_dim": 64,
              "projector_input_dim": 64, "projector_output_dim": 64}
    text = {**_text(tok), "head_dim": HEAD_DIM, "intermediate_size_mlp": TEXT["intermediate_size"],
            "num_local_experts": 2, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2,
            "attention_chunk_size": 64}
    ids = _ids(tok, boi_token_index="<|image_start|>", eoi_token_index="<|image_end|>",
               image_token_index="<|patch|>")
    return Llama4Config(vision_config=vision, text_config=text, tie_word_embeddings=False, **ids)


def _llama4_processor(tok):
    from transformers import Llama4ImageProcessor, Llama4Processor

    image = Llama4ImageProcessor(size={"height": 56, "width": 56}, max_patches=4, resize_to_max_canvas=False)
    return Llama4Processor(image_processor=image, tokenizer=_llama4_tok(tok), patch_size=14, pixel_shuffle_ratio=0.5,
                           chat_template=LLAMA4_TEMPLATE)


# --- Gemma 3n (images and audio) -------------------------------------------------------------------
# The vision tower is timm's MobileNetV5 encoder (`pip install timm`), named by its timm architecture in the config;
# `model_args` shrink it (channels x 0.05; the fusion adapter pooled to 2x2), so a 64 px image gives 4 soft tokens of
# 2048 channels (timm fixes the encoder's width). Audio: a 1-layer, 32-wide conformer on the real 128-mel features;
# the processor writes the real 188 audio tokens per clip (30 s at most), the model pads the encoder's output to them.
# The model tells media tokens apart by id: those from the vision embedder's `vocab_offset` (`<end_of_image>`,
# `<image_soft_token>`; real 262144) up to the audio embedder's (`<end_of_audio>`, `<audio_soft_token>`; real 262272)
# are vision tokens, those above are audio tokens. So these four are the tokenizer's last, in that order, and both
# offsets point at them (the real vocabulary's layout, with its 128-id gaps closed). The tiny tokenizer adds its named
# tokens first, in order, then the plain ones: every token is named here (the turn markers as `sot_token` /
# `eot_token`), so that none lands after the media ones.

GEMMA3N_NAMED = (("bos_token", "<bos>"), ("eos_token", "<eos>"), ("pad_token", "<pad>"),
                 ("sot_token", "<start_of_turn>"), ("eot_token", "<end_of_turn>"),
                 ("boi_token", "<start_of_image>"), ("boa_token", "<start_of_audio>"),
                 ("eoi_token", "<end_of_image>"), ("image_token", "<image_soft_token>"),
                 ("eoa_token", "<end_of_audio>"), ("audio_token", "<audio_soft_token>"))
GEMMA3N_IMAGE_TOKENS = 4  # msfa_output_resolution ** 2
GEMMA3N_AUDIO_TOKENS = 188  # the real count: the feature extractor cuts clips at 30 s

# google/gemma-3n-E4B-it: Gemma 3's template with `<image_soft_token>` / `<audio_soft_token>` per item (the processor
# wraps each in `\n\n<start_of_...>` ... `<end_of_...>\n\n`); the vendor's also takes a system prompt given as a
# plain string, which this copy (like GEMMA3_TEMPLATE) does not.
_GEMMA3_IMAGE_ITEM = "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
if _GEMMA3_IMAGE_ITEM not in GEMMA3_TEMPLATE:
    raise LatheError("GEMMA3_TEMPLATE changed: update GEMMA3N_TEMPLATE in lathe.testing.tiny_vlm_more to match.")
GEMMA3N_TEMPLATE = GEMMA3_TEMPLATE.replace(
    _GEMMA3_IMAGE_ITEM,
    "            {%- if item['type'] == 'audio' -%}\n                {{ '<audio_soft_token>' }}\n"
    "            {%- elif item['type'] == 'image' -%}\n                {{ '<image_soft_token>' }}\n")


def _gemma3n_config(tok):
    from transformers import Gemma3nConfig

    _gemma_tok(tok)
    ids = _ids(tok, boi_token_id="<start_of_image>", eoi_token_id="<end_of_image>", image_token_id="<image_soft_token>",
               boa_token_id="<start_of_audio>", eoa_token_id="<end_of_audio>", audio_token_id="<audio_soft_token>")
    if sorted(ids.values())[-4:] != [ids["eoi_token_id"], ids["image_token_id"], ids["eoa_token_id"],
                                     ids["audio_token_id"]] or ids["audio_token_id"] != len(tok) - 1:
        raise LatheError("The tiny Gemma 3n tokenizer must end with <end_of_image>, <image_soft_token>, "
                         "<end_of_audio>, <audio_soft_token> (the model reads media tokens by id range).")
    vision_offset, audio_offset = ids["eoi_token_id"], ids["eoa_token_id"]
    text = {**_text(tok), "head_dim": HEAD_DIM, "sliding_window": 64, "tie_word_embeddings": True,
            "layer_types": ["sliding_attention", "full_attention"], "num_kv_shared_layers": 0,
            "vocab_size_per_layer_input": vision_offset, "hidden_size_per_layer_input": 8, "laurel_rank": 4,
            "altup_num_inputs": 2}
    vision = {"architecture": "mobilenetv5_300m_enc", "hidden_size": 2048, "vocab_offset": vision_offset,
              "model_args": {"channel_multiplier": 0.05, "msfa_output_resolution": 2}}
    audio = {"hidden_size": 32, "conf_num_attention_heads": 2, "conf_num_hidden_layers": 1,
             "sscp_conv_channel_size": [8, 8], "vocab_offset": audio_offset}
    return Gemma3nConfig(text_config=text, vision_config=vision, audio_config=audio,
                         vision_soft_tokens_per_image=GEMMA3N_IMAGE_TOKENS,
                         audio_soft_tokens_per_image=GEMMA3N_AUDIO_TOKENS, tie_word_embeddings=True, **ids)


def _gemma3n_processor(tok):
    from transformers import Gemma3nAudioFeatureExtractor, Gemma3nProcessor, SiglipImageProcessor

    # Real: 768x768, rescaled to [0, 1] and not normalized (MobileNetV5's mean 0, std 1); 128-mel audio at 16 kHz.
    image = SiglipImageProcessor(size={"height": 64, "width": 64}, do_normalize=False)
    return Gemma3nProcessor(feature_extractor=Gemma3nAudioFeatureExtractor(), image_processor=image,
                            tokenizer=_gemma_tok(tok), image_seq_length=GEMMA3N_IMAGE_TOKENS,
                            audio_seq_length=GEMMA3N_AUDIO_TOKENS, chat_template=GEMMA3N_TEMPLATE)


# --- registry --------------------------------------------------------------------------------------
# `template`: LLaMA-Factory's name. LLaMA-Factory has no OneVision or Idefics3 entry: OneVision's ChatML
# layout is `llava_next_qwen` (which adds a default system the vendor template lacks); Idefics3 is named
# after itself.

MORE_FAMILIES: dict[str, VlmFamily] = {
    "llava": VlmFamily("LlavaForConditionalGeneration", _llava_config, _llava_processor, "llava", ("image",),
                       LLAVA_TOKENS),
    "llava_next": VlmFamily("LlavaNextForConditionalGeneration", _llava_next_config, _llava_next_processor,
                            "llava_next_mistral", ("image",), LLAVA_TOKENS),
    "llava_next_video": VlmFamily("LlavaNextVideoForConditionalGeneration", _llava_next_video_config,
                                  _llava_next_video_processor, "llava_next_video", ("image", "video"),
                                  LLAVA_VIDEO_TOKENS),
    "llava_onevision": VlmFamily("LlavaOnevisionForConditionalGeneration", _llava_onevision_config,
                                 _llava_onevision_processor, "llava_next_qwen", ("image", "video"),
                                 ONEVISION_TOKENS),
    "gemma3": VlmFamily("Gemma3ForConditionalGeneration", _gemma3_config, _gemma3_processor, "gemma3", ("image",),
                        GEMMA3_TOKENS, GEMMA3_NAMED),
    "paligemma": VlmFamily("PaliGemmaForConditionalGeneration", _paligemma_config, _paligemma_processor,
                           "paligemma", ("image",), PALIGEMMA_TOKENS, (("image_token", "<image>"),)),
    "mistral3": VlmFamily("Mistral3ForConditionalGeneration", _mistral3_config, _mistral3_processor,
                          "mistral_small", ("image",), MISTRAL_TOKENS),
    "pixtral": VlmFamily("LlavaForConditionalGeneration", _pixtral_config, _pixtral_processor, "pixtral",
                         ("image",), MISTRAL_TOKENS),
    "internvl": VlmFamily("InternVLForConditionalGeneration", _internvl_config, _internvl_processor, "intern_vl",
                          ("image", "video"), named_tokens=INTERNVL_NAMED),
    "idefics3": VlmFamily("Idefics3ForConditionalGeneration", _idefics3_config, _idefics3_processor, "idefics3",
                          ("image",), IDEFICS3_TOKENS),
    "smolvlm": VlmFamily("SmolVLMForConditionalGeneration", _smolvlm_config, _smolvlm_processor, "smolvlm",
                         ("image", "video"), SMOLVLM_TOKENS),
    "mllama": VlmFamily("MllamaForConditionalGeneration", _mllama_config, _mllama_processor, "mllama", ("image",),
                        MLLAMA_TOKENS),
    "llama4": VlmFamily("Llama4ForConditionalGeneration", _llama4_config, _llama4_processor, "llama4", ("image",),
                        LLAMA4_TOKENS),
}

FAMILIES.update(MORE_FAMILIES)

# Families whose model needs a package beyond transformers (Gemma 3n: timm, in lathe's `multimodal` extra), kept out
# of MORE_FAMILIES, whose tests build every entry.
EXTRA_FAMILIES: dict[str, VlmFamily] = {
    "gemma3n": VlmFamily("Gemma3nForConditionalGeneration", _gemma3n_config, _gemma3n_processor, "gemma3n",
                         ("image", "audio"), named_tokens=GEMMA3N_NAMED),
}

FAMILIES.update(EXTRA_FAMILIES)
