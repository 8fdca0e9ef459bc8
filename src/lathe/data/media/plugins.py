"""Media plugins: one per model family, turning `<image>` / `<video>` / `<audio>` placeholders plus the media files
into exactly what the family's own processor makes of them.

Why the processor does the work: a family's token layout for one image (how many pad tokens, what wraps them,
row-break tokens, "\\n\\n" around it, crops) is written once, in its transformers processor, and changes between
releases. transformers' processors expose it as a replacement string per media item (`replace_image_token`, read
through `return_text_replacement_offsets`), so a plugin only says what a chat template writes for one item (the
`prompt` text around the processor's own placeholder token) and lathe puts the processor's replacement there,
then tokenizes the whole conversation in one call as for text. The parity tests hold the resulting ids to the
processor's own `apply_chat_template(..., tokenize=True)`.

The media tensors (pixel values, grids, audio features) are not stored with the tokens: they are made again per
batch by the collator (`collate.py`), since they are 100-1,000x the size of the ids (one 768x768 image is 8 MiB of
fp32 patches) and a cache of them would not fit the data sets people train on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from lathe.data.media.load import adjust_for_qwen_vl
from lathe.errors import LatheError
from lathe.registry import Choice, Registry

if TYPE_CHECKING:
    from lathe.config import RunConfig

KINDS = ("image", "video", "audio")
PLACEHOLDERS = {"image": "<image>", "video": "<video>", "audio": "<audio>"}  # as LLaMA-Factory's data writes them
COLUMNS = {"image": "images", "video": "videos", "audio": "audios"}  # the sample's column of each kind
# What a processor's __call__ returns for the text: made by lathe's own tokenization (and the plugin's hooks) instead.
TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "text_replacement_offsets",
                       "labels", "cross_attention_mask"})


@dataclass(frozen=True, kw_only=True)
class MediaPlugin(Choice):
    """What lathe needs to know of one family beyond its processor.

    `prompt`: kind -> the text a chat template writes for one item, with `{token}` where the processor's own
    placeholder token stands (Qwen2-VL: `<|vision_start|>{token}<|vision_end|>`); the processor's replacement
    takes the place of `{token}`. `model_types`: the transformers `model_type`s served when the run's template
    names no plugin. `token_types`: the per-token key the model takes besides input_ids (`mm_token_type_ids`,
    Gemma 3's `token_type_ids`), made from the ids by the processor's `create_mm_token_type_ids`. `mrope`: the
    model derives 3-D position ids from the media grids, so samples cannot share a packed row. `audio_in_video`:
    with `use_audio_in_video` the family hears each video's sound with its frames (a video item then carries its
    `sound`, encode.py), its processor interleaving the two (the omni processors' `load_audio_from_video`).

    Hooks for the families the generic path does not fit (each None / default for the others):
    - `expands=False`: the processor's placeholder stays one token (mllama reads images through cross-attention),
      so an item's replacement is the token itself; such processors give no replacement offsets.
    - `batch_features(plugin, processor, rows, input_ids, kwargs) -> dict`: the media tensors of a batch built per
      row (`rows[i]`: kind -> the loaded items of row i) together with per-token tensors from the batch's padded
      `input_ids` (mllama: pixel values (batch, images, tiles, ...) and `cross_attention_mask` (batch, seq,
      images, tiles)), where one processor call over all the batch's items cannot say which row holds what.
    - `arrange(processor, ids) -> order`: a permutation of one tokenized sample's positions, applied to its ids,
      labels and mask after the template's encoding (PaliGemma: its images before `<bos>`); lengths never change,
      so truncation to `cutoff_len` already counted every token.
    - `types_of(processor, input_ids, labels) -> rows of ints`: the `token_types` values, made from the batch's
      ids and labels (None: the processor's `create_mm_token_type_ids`; labels are None at inference).
    """

    prompt: Mapping[str, str]
    model_types: tuple[str, ...] = ()
    token_types: str | None = None
    mrope: bool = False
    audio_in_video: bool = False  # `use_audio_in_video`: the family also hears each video's sound track
    expands: bool = True
    adjust_image: Callable[[Any], Any] | None = field(default=None, compare=False)  # after lathe's own scaling
    call_kwargs: Callable[[Any, Any], dict[str, Any]] = field(default=lambda processor, opts: {}, compare=False)
    batch_features: Callable[..., dict[str, Any]] | None = field(default=None, compare=False)
    arrange: Callable[[Any, Any], Any] | None = field(default=None, compare=False)
    types_of: Callable[[Any, Any, Any], list[list[int]]] | None = field(default=None, compare=False)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind in KINDS if kind in self.prompt)

    def token(self, processor: Any, kind: str) -> str:
        """The processor's own placeholder token for `kind` (`<|image_pad|>`), which its replacements replace."""
        token = getattr(processor, f"{kind}_token", None)
        if not token:
            raise LatheError(f"The {type(processor).__name__} of this model has no {kind} token: media plugin "
                             f"`{self.name}` cannot place its {kind}s.")
        return token

    def prompt_text(self, processor: Any, kind: str) -> str:
        """What one item of `kind` is in a rendered prompt before expansion, as the family's chat template writes it."""
        return self.prompt[kind].format(token=self.token(processor, kind))

    def replacements(self, processor: Any, media: Mapping[str, Sequence[Any]], kwargs: Mapping[str, Any]
                     ) -> dict[str, list[str]]:
        """kind -> the text each item becomes, in order: the processor's own expansion of its placeholder.
        `kwargs`: the processor-call options of the run (`MediaContext.kwargs`)."""
        if not self.expands:
            return {kind: [self.token(processor, kind)] * len(media.get(kind) or ()) for kind in self.kinds}
        texts = "".join(self.token(processor, kind) * len(media.get(kind) or ()) for kind in self.kinds)
        out = processor(text=[texts], return_text_replacement_offsets=True, **self.processor_inputs(media), **kwargs)
        found: dict[str, list[str]] = {kind: [] for kind in self.kinds}
        for item in out["text_replacement_offsets"][0]:
            found[item["type"]].append(item["replacement"])
        for kind in self.kinds:
            if len(found[kind]) != len(media.get(kind) or ()):
                raise LatheError(f"media plugin `{self.name}`: the processor expanded {len(found[kind])} {kind}s of "
                                 f"{len(media.get(kind) or ())}.")
        return found

    def features(self, processor: Any, media: Mapping[str, Sequence[Any]], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The tensors of a batch's media, in order (pixel values, grids, audio features...), as the processor
        makes them."""
        if not any(media.get(kind) for kind in self.kinds):
            return {}
        texts = "".join(self.token(processor, kind) * len(media.get(kind) or ()) for kind in self.kinds)
        out = processor(text=[texts], return_tensors="pt", **self.processor_inputs(media), **kwargs)
        return {key: value for key, value in out.items() if key not in TEXT_KEYS}

    @staticmethod
    def processor_inputs(media: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        if media.get("image"):
            inputs["images"] = list(media["image"])
        if media.get("video"):
            from transformers.video_utils import VideoMetadata

            # the frames lathe sampled (load.py), with their rate, so timestamps (Qwen3-VL, GLM-4.1V) are the video's
            inputs["videos"] = [video.frames for video in media["video"]]
            inputs["video_metadata"] = [VideoMetadata(total_num_frames=len(v.frames), fps=v.fps, duration=v.duration,
                                                      frames_indices=list(range(len(v.frames))))
                                        for v in media["video"]]
        audio, slots = audio_slots(media)
        if any(slot is not None for slot in slots):
            # `use_audio_in_video`: each heard video's sound is given decoded, with the video it belongs to, so
            # the processor interleaves it with that video's frames (transformers' `load_audio_from_video`)
            inputs.update(audio=audio, audio_from_video_indices=slots, load_audio_from_video=True)
        elif audio:
            inputs["audio"] = audio
        return inputs

    def token_type_ids(self, processor: Any, input_ids: Sequence[Sequence[int]], labels: Any = None
                       ) -> list[list[int]] | None:
        """The per-token modality ids the model takes (`token_types`), from the batch's ids (and labels, where the
        family's types follow what is learned); None when it takes none."""
        if self.token_types is None:
            return None
        if self.types_of is not None:
            return self.types_of(processor, input_ids, labels)
        return processor.create_mm_token_type_ids([list(map(int, ids)) for ids in input_ids])

    def batch_inputs(self, processor: Any, rows: Sequence[Mapping[str, Sequence[Any]]], input_ids: Any,
                     kwargs: Mapping[str, Any], labels: Any = None) -> dict[str, Any]:
        """Every media input of a padded batch: the tensors of its rows' items (`rows[i]`: kind -> the loaded items
        of row i, in the order the row's placeholders meet them) and the per-token types. The collator and
        `generate` both call this, so training and inference feed the model alike. With heard videos, the audio
        comes in the order the ids meet it (`heard_order`) and the model is told `use_audio_in_video=True`, which
        it needs to number a heard video's positions (the processor returns no such key)."""
        import torch

        ids = input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids
        if self.batch_features is not None:
            out = self.batch_features(self, processor, rows, input_ids, kwargs)
        else:
            items: dict[str, Any] = {kind: [item for row in rows for item in row.get(kind) or ()] for kind in KINDS}
            heard = any(_sound(video) is not None for video in items["video"])
            if heard:
                items["audio_from_video"] = heard_order(processor, rows, ids)
            out = self.features(processor, items, kwargs)
            if heard:  # the model numbers the positions of a heard video and its sound together (get_rope_index)
                out["use_audio_in_video"] = True
        types = self.token_type_ids(processor, ids, labels)
        if types is not None:
            out[self.token_types] = torch.tensor(types, dtype=torch.long)
        return out


def _sound(video: Any) -> Any:
    return getattr(video, "sound", None)


def audio_slots(media: Mapping[str, Any]) -> tuple[list[Any], list[int | None]]:
    """The audio a processor call takes, in the order the model meets it, and for each slot the index (in
    `media["video"]`) of the video it is the sound of, or None for a clip of its own (`media["audio"]`).

    `media["audio_from_video"]`, where given, is that order (`heard_order` reads a batch's from its ids); by
    default each heard video's sound comes first, then the clips: the order of a text that holds the videos
    before the audio, as the processor calls here write it."""
    videos, clips = list(media.get("video") or ()), list(media.get("audio") or ())
    slots = media.get("audio_from_video")
    if slots is None:
        slots = [k for k, video in enumerate(videos) if _sound(video) is not None] + [None] * len(clips)
    own = iter(clips)
    return [next(own) if k is None else _sound(videos[k]) for k in slots], list(slots)


def heard_order(processor: Any, rows: Sequence[Mapping[str, Sequence[Any]]], input_ids: Sequence[Sequence[int]]
                ) -> list[int | None]:
    """The audio slots of a batch in the order its ids hold them (row by row): for each `<|audio_bos|>`, the index
    among the batch's videos of the video whose sound starts there (right after the video's `<|vision_bos|>`, as
    the Qwen2.5-Omni and Qwen3-Omni processors lay out a heard video), or None for a clip of its own. The audio
    features must come in this order: the model fills the audio tokens and numbers their positions in it."""
    tokenizer = processor.tokenizer
    vision_bos = tokenizer.convert_tokens_to_ids(processor.vision_bos_token)
    audio_bos = tokenizer.convert_tokens_to_ids(processor.audio_bos_token)
    order: list[int | None] = []
    offset = 0
    for row_number, (row, ids) in enumerate(zip(rows, input_ids)):
        ids = [int(i) for i in ids]
        videos = list(row.get("video") or ())
        heard = iter(k for k, video in enumerate(videos) if _sound(video) is not None)
        found = [next(heard, -1) if i and ids[i - 1] == vision_bos else None
                 for i, token in enumerate(ids) if token == audio_bos]
        wanted = (sum(_sound(video) is not None for video in videos), len(row.get("audio") or ()))
        if -1 in found or (len(found) - found.count(None), found.count(None)) != wanted:
            raise LatheError(f"row {row_number} of the batch holds {len(found)} audio start(s) for "
                             f"{wanted[0]} heard video(s) and {wanted[1]} audio clip(s) (cut by cutoff_len?).")
        order += [None if k is None else offset + k for k in found]
        offset += len(videos)
    return order


MEDIA_PLUGINS: Registry = Registry("media plugin", "template", __name__)


def plugin_for(template: Any, model_type: str | None) -> MediaPlugin | None:
    """The run's plugin: the one serving the model's type, else the one its template names (`media` slot).

    The model decides first: LLaMA-Factory's templates name a family's text (`llava_next_qwen` serves LLaVA-NeXT
    and LLaVA-OneVision alike), while the kinds of media a model takes are its own."""
    for plugin_name in MEDIA_PLUGINS:
        plugin = MEDIA_PLUGINS[plugin_name]
        if model_type and model_type in plugin.model_types:
            return plugin
    name = getattr(template, "media", "") or ""
    return MEDIA_PLUGINS[name] if name else None


# Options of some image processors only: the run's option -> the processor's keyword.
IMAGE_PROCESSOR_OPTIONS = {"image_do_pan_and_scan": "do_pan_and_scan", "crop_to_patches": "crop_to_patches"}


def call_kwargs(cfg: "RunConfig", plugin: MediaPlugin, processor: Any, opts: Any) -> dict[str, Any]:
    """The keyword arguments of every processor call of the run: the plugin's own and the image-processor options
    set in the config, each refused where the model's image processor has no such setting."""
    kwargs = dict(plugin.call_kwargs(processor, opts))
    image_processor = getattr(processor, "image_processor", None)
    for option, keyword in IMAGE_PROCESSOR_OPTIONS.items():
        if getattr(cfg.data, option):
            if not hasattr(image_processor, keyword):
                raise LatheError(f"`{option}: true` is a setting of the image processors that have `{keyword}` "
                                 f"(Gemma 3's pan and scan, InternVL's crops); {type(image_processor).__name__} has "
                                 f"none. Remove `{option}`.")
            kwargs[keyword] = True
    return kwargs


def check_media_run(cfg: "RunConfig", plugin: MediaPlugin) -> None:
    """Settings a multimodal run cannot have, refused before any data is read."""
    d = cfg.data
    if d.use_audio_in_video and not plugin.audio_in_video:
        hearing = ", ".join(name for name in MEDIA_PLUGINS if MEDIA_PLUGINS[name].audio_in_video)
        raise LatheError(f"`use_audio_in_video: true` feeds each video's sound to the omni models that hear it "
                         f"(media plugins: {hearing}); media plugin `{plugin.name}` takes {', '.join(plugin.kinds)} "
                         "only. Remove the option.")
    if d.neat_packing or d.packing or ("padding_free" in cfg.explicit and d.padding_free):
        key = "neat_packing" if d.neat_packing else "packing" if d.packing else "padding_free"
        why = ("its model numbers positions in 3-D from each sample's media (mrope), which a shared row would mix"
               if plugin.mrope else "a shared row does not carry its samples' media apart yet")
        raise LatheError(f"`{key}` cannot be used with media plugin `{plugin.name}`: {why}; leave it unset "
                         "(multimodal batches keep one sample per row).")


def _fps(processor: Any, opts: Any) -> dict[str, Any]:
    """Qwen-VL family: the frames were sampled by lathe at `video_fps`; the processor must not sample again."""
    if getattr(processor, "video_processor", None) is None:
        return {}
    return {"do_sample_frames": False, "fps": opts.video_fps}


QWEN_VISION = {"image": "<|vision_start|>{token}<|vision_end|>", "video": "<|vision_start|>{token}<|vision_end|>"}

MEDIA_PLUGINS.register(MediaPlugin(
    name="qwen2_vl", help="Qwen2-VL, Qwen2.5-VL, Qwen3-VL: images and video, mrope positions",
    prompt=QWEN_VISION, model_types=("qwen2_vl", "qwen2_5_vl"),
    token_types="mm_token_type_ids", mrope=True, call_kwargs=_fps, adjust_image=adjust_for_qwen_vl,
))

MEDIA_PLUGINS.register(MediaPlugin(
    name="qwen3_vl", help="Qwen3-VL: images, and video as timestamped frames; mrope positions",
    # a video's replacement is its frames, each `<t seconds><|vision_start|>...<|vision_end|>`: no outer wrapper
    prompt={"image": QWEN_VISION["image"], "video": "{token}"}, model_types=("qwen3_vl", "qwen3_vl_moe"),
    token_types="mm_token_type_ids", mrope=True, call_kwargs=_fps, adjust_image=adjust_for_qwen_vl,
))

MEDIA_PLUGINS.register(MediaPlugin(
    name="glm4v", help="GLM-4.1V / GLM-4.5V: images and video, mrope positions",
    prompt={"image": "<|begin_of_image|>{token}<|end_of_image|>", "video": "<|begin_of_video|>{token}<|end_of_video|>"},
    model_types=("glm4v", "glm4v_moe"), token_types="mm_token_type_ids", mrope=True, call_kwargs=_fps,
    adjust_image=adjust_for_qwen_vl,
))

# Families whose processor expands its own one-token placeholder, written bare by their chat templates.
_BARE = "{token}"
for _name, _help, _kinds, _types, _token_types in (
    ("llava", "LLaVA 1.5: images", ("image",), ("llava",), None),
    ("llava_next", "LLaVA-NeXT: images at any resolution", ("image",), ("llava_next",), None),
    ("llava_next_video", "LLaVA-NeXT-Video: images and video", ("image", "video"), ("llava_next_video",), None),
    ("llava_onevision", "LLaVA-OneVision: images and video", ("image", "video"), ("llava_onevision",), None),
    ("gemma3", "Gemma 3: images (bidirectional attention inside each image)", ("image",), ("gemma3",), "token_type_ids"),
    ("pixtral", "Pixtral / Mistral Small 3.1: images at their own size, rows of patches", ("image",),
     ("mistral3", "pixtral"), None),
    ("llama4", "Llama 4: images as tiles", ("image",), ("llama4",), None),
    ("idefics3", "Idefics3: images split into tiles plus a global view", ("image",), ("idefics3",), None),
    ("smolvlm", "SmolVLM / SmolVLM2: images as Idefics3's tiles, video as timestamped frames", ("image", "video"),
     ("smolvlm",), None),
):
    MEDIA_PLUGINS.register(MediaPlugin(name=_name, help=_help, prompt=dict.fromkeys(_kinds, _BARE), model_types=_types,
                                       token_types=_token_types))

def _own_crops(processor: Any, opts: Any) -> dict[str, Any]:
    """InternVL: the processor's call cuts images into tiles by default, the checkpoint's image processor (and
    LLaMA-Factory) only when asked: follow the image processor's config; `crop_to_patches: true` turns it on."""
    return {"crop_to_patches": bool(getattr(getattr(processor, "image_processor", None), "crop_to_patches", False))}


MEDIA_PLUGINS.register(MediaPlugin(
    name="intern_vl", help="InternVL 3: images and video frames as <img>...</img> blocks",
    prompt={"image": "{token}\n", "video": "{token}\n"}, model_types=("internvl",), call_kwargs=_own_crops,
))


def _audio_rate(processor: Any, opts: Any) -> dict[str, Any]:
    """Audio arrives resampled to `audio_sampling_rate` (load.py); the feature extractor is told so."""
    return {"sampling_rate": opts.audio_sampling_rate}


MEDIA_PLUGINS.register(MediaPlugin(
    name="qwen2_audio", help="Qwen2-Audio: audio as Whisper features", model_types=("qwen2_audio",),
    prompt={"audio": "<|audio_bos|>{token}<|audio_eos|>"}, call_kwargs=_audio_rate,
))


# Gemma 3n: its chat template writes `<image_soft_token>` / `<audio_soft_token>` bare; the processor wraps each in
# `\n\n<start_of_image>` ... `<end_of_image>\n\n` (256 image, 188 audio tokens in the real model). The model tells
# media tokens apart by id range, so it takes no token types (the processor's `token_type_ids` go unused).
MEDIA_PLUGINS.register(MediaPlugin(
    name="gemma3n", help="Gemma 3n: images (a timm MobileNetV5 tower: needs timm) and audio",
    prompt={"image": _BARE, "audio": _BARE}, model_types=("gemma3n",), call_kwargs=_audio_rate,
))


def _omni(processor: Any, opts: Any) -> dict[str, Any]:
    return {**_fps(processor, opts), **_audio_rate(processor, opts)}


# `use_audio_in_video`: a heard video's replacement is `<|audio_bos|>`, its frames and its sound interleaved in 2 s
# chunks, `<|audio_eos|>`, inside the vision_bos/eos of its prompt text (`replace_video_with_audio_token`)
MEDIA_PLUGINS.register(MediaPlugin(
    name="qwen2_omni", help="Qwen2.5-Omni (its thinker): images, video (heard with use_audio_in_video) and audio; "
                            "mrope positions",
    model_types=("qwen2_5_omni_thinker",), mrope=True, audio_in_video=True, call_kwargs=_omni,
    adjust_image=adjust_for_qwen_vl,
    prompt={"image": "<|vision_bos|>{token}<|vision_eos|>", "video": "<|vision_bos|>{token}<|vision_eos|>",
            "audio": "<|audio_bos|>{token}<|audio_eos|>"},
))


# Qwen3-Omni's thinker: the same processor layout with Qwen3's token spellings. A heard video's replacement is
# `<|audio_start|>`, its frames' and its sound's tokens interleaved one by one in time order (13 positions a
# second), `<|audio_end|>`, inside the vision_start/end of its prompt text (`replace_video_with_audio_token`).
MEDIA_PLUGINS.register(MediaPlugin(
    name="qwen3_omni", help="Qwen3-Omni (its MoE thinker): images, video (heard with use_audio_in_video) and "
                            "audio; mrope positions",
    model_types=("qwen3_omni_moe_thinker",), mrope=True, audio_in_video=True, call_kwargs=_omni,
    adjust_image=adjust_for_qwen_vl,
    prompt={"image": QWEN_VISION["image"], "video": QWEN_VISION["video"],
            "audio": "<|audio_start|>{token}<|audio_end|>"},
))


def _mllama_batch(plugin: MediaPlugin, processor: Any, rows: Sequence[Mapping[str, Sequence[Any]]], input_ids: Any,
                  kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Llama 3.2 Vision: each `<|image|>` stays one token and the text layers read the image tiles through
    cross-attention, so the tensors are per row of the batch: pixel values (batch, images, tiles, 3, H, W), the
    aspect ratio of each (`aspect_ratio_ids`, `aspect_ratio_mask`), and `cross_attention_mask` (batch, seq,
    images, tiles) saying which tokens see which image: from an image's token to the next image's, or to the end
    (transformers' own `get_cross_attention_token_mask`, read on the batch's padded ids). A row without images
    gets padding slots (aspect ratio 0, no tile seen), as the processor pads a row with fewer images; its
    tokens see no image."""
    import torch
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    images = [list(row.get("image") or ()) for row in rows]
    taken = [i for i, row in enumerate(images) if row]
    if not taken:
        return {}
    out = processor.image_processor([images[i] for i in taken], return_tensors="pt", **kwargs)
    out.pop("num_tiles", None)
    slots = out["pixel_values"].shape[1]
    pixels = out["pixel_values"].new_zeros((len(rows), *out["pixel_values"].shape[1:]))
    ratio_ids = out["aspect_ratio_ids"].new_zeros((len(rows), slots))
    ratio_mask = out["aspect_ratio_mask"].new_zeros((len(rows), *out["aspect_ratio_mask"].shape[1:]))
    ratio_mask[:, :, 0] = 1  # a padding slot, as the image processor writes one
    index = torch.tensor(taken)
    pixels[index], ratio_ids[index], ratio_mask[index] = (out["pixel_values"], out["aspect_ratio_ids"],
                                                          out["aspect_ratio_mask"])
    ids = input_ids.tolist() if hasattr(input_ids, "tolist") else [list(map(int, r)) for r in input_ids]
    spans = [get_cross_attention_token_mask(row, processor.image_token_id) for row in ids]
    for row, (found, items) in enumerate(zip(spans, images)):
        if len(found) != len(items):
            raise LatheError(f"media plugin `{plugin.name}`: row {row} of the batch holds {len(found)} "
                             f"{processor.image_token} token(s) for {len(items)} image(s) (cut by cutoff_len?).")
    tiles = [[int(ratio_mask[row, slot].sum()) for slot in range(len(items))] for row, items in enumerate(images)]
    spans = [found or [[0, 0]] for found in spans]  # a row without images: one empty span, no token sees a tile
    mask = convert_sparse_cross_attention_mask_to_dense(
        spans, num_tiles=[t or [0] for t in tiles], max_num_tiles=processor.image_processor.max_image_tiles,
        length=max(len(row) for row in ids))
    return {"pixel_values": pixels, "aspect_ratio_ids": ratio_ids, "aspect_ratio_mask": ratio_mask,
            "cross_attention_mask": torch.from_numpy(mask[:, :, :slots])}


MEDIA_PLUGINS.register(MediaPlugin(
    name="mllama", help="Llama 3.2 Vision: images through cross-attention; one <|image|> token each",
    prompt={"image": _BARE}, model_types=("mllama",), expands=False, batch_features=_mllama_batch,
))


def _images_first(processor: Any, ids: Any) -> Any:
    """PaliGemma: every image token moves before the rest (`<bos>`, the prompt), in order, as its processor lays
    out a prompt and LLaMA-Factory prepends them to the ids; the text keeps its order."""
    import numpy as np

    ids = np.asarray(ids)
    image = ids == processor.image_token_id
    return np.concatenate([np.flatnonzero(image), np.flatnonzero(~image)])


def _prefix_types(processor: Any, input_ids: Any, labels: Any) -> list[list[int]]:
    """PaliGemma's prefix-LM types: 0 for the prefix (images, `<bos>`, the prompt), which attends both ways, 1 from
    the first learned token on (the answer), causal, as its processor writes them for a prompt and its suffix.
    Learned tokens are never in the prefix: a prefix token sees the tokens after it, so a learned one there would
    be seen before it is predicted (with `train_on_prompt` the prefix is the images alone). At inference (no
    labels) the whole prompt is the prefix and each generated token is 1 (the model adds them)."""
    from lathe.data.sample import IGNORE_INDEX

    rows = input_ids.tolist() if hasattr(input_ids, "tolist") else [list(r) for r in input_ids]
    if labels is None:
        return [[0] * len(row) for row in rows]
    labels = labels.tolist() if hasattr(labels, "tolist") else [list(r) for r in labels]
    types = []
    for row, learned in zip(rows, labels):
        first = next((i for i, label in enumerate(learned) if label != IGNORE_INDEX), len(row))
        types.append([0] * first + [1] * (len(row) - first))
    return types


MEDIA_PLUGINS.register(MediaPlugin(
    name="paligemma", help="PaliGemma 1 / 2: images before <bos>, a bidirectional prefix (token_type_ids)",
    prompt={"image": _BARE}, model_types=("paligemma",), token_types="token_type_ids", arrange=_images_first,
    types_of=_prefix_types,
))
