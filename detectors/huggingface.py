"""Hugging Face classifiers saved with ``save_pretrained`` (``--model hf:DIR``) behind the Detector contract.

A directory is read only when it holds safetensors weights (``model.safetensors``, or a sharded index of
them) and nothing in it asks for remote code (``auto_map`` in ``config.json``, ``tokenizer_config.json`` or
``preprocessor_config.json``): :func:`check_directory` refuses anything else before ``transformers`` is even
imported, and ``from_pretrained`` runs with ``use_safetensors=True`` and ``trust_remote_code=False``.

Supported model types (:data:`FAMILIES`): encoders whose classifier reads the first token.

- text, ``AutoModelForSequenceClassification`` with the directory's tokenizer: ``bert``, ``distilbert``,
  ``roberta``. :class:`HuggingFaceTextDetector` offers what :class:`detectors.text.TextTransformer` offers
  (``embed``, ``forward_embeddings``, ``attention_mask``, ``embedding``, ``forward_with_attention(ids,
  attention_mask=None)``) and carries a :class:`PretrainedTokenizer` with the surface of
  :class:`detectors.text_data.TextTokenizer`.
- images, ``AutoModelForImageClassification`` with the directory's image processor: ``vit``, ``deit``.
  :class:`HuggingFaceImageDetector` takes pixels in [0, 1] and runs the processor's steps as torch operations
  inside the model (:class:`ImagePreprocess`): grey to RGB, resize, centre crop, normalisation, so attacks
  and their eps stay in [0, 1] pixel units and gradients reach the pixels.

Attention is the model's own: it is loaded with ``attn_implementation="eager"`` and called with
``output_attentions=True``, which returns every layer's softmax weights (batch, heads, tokens, tokens) inside
the autograd graph. Token 0 is CLS (DeiT's distillation token is token 1 and covers no input). The sanity
checks edit those weights inside the forward (:func:`detectors.huggingface_editing.edited_attention`): for the
duration the model's attention modules call a function registered with transformers' ``AttentionInterface``
(eager's mask registered with it) that runs the model's own eager attention, edits its weights and recomputes the output as the edited weights
times the values, as :mod:`detectors.foreign_editing` does for ``nn.MultiheadAttention``.

``transformers`` is imported only when a directory is loaded.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.base import Detector, TokenMap
from detectors.errors import BadInputError, short_listing
from detectors.huggingface_editing import module_edits
from detectors.inputs.text import TokenIds, message_width, padded_attentions

HF_PREFIX = "hf:"
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
# the tokens a text model's input may hold at most (the tool's own text detector's cap, detectors.text_data)
TEXT_MAX_LENGTH = 128


@dataclass(frozen=True)
class Family:
    """A supported ``model_type``: its input and the tokens it puts before the input's (CLS, and DeiT's
    distillation token)."""

    input: str
    leading_tokens: int = 1


FAMILIES = {"bert": Family("text"), "distilbert": Family("text"), "roberta": Family("text"), "vit": Family("image"),
            "deit": Family("image", leading_tokens=2)}
HEAD_SUFFIX = {"text": "ForSequenceClassification", "image": "ForImageClassification"}


def is_huggingface(model: str) -> bool:
    return model.startswith(HF_PREFIX)


def _read_json(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise BadInputError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(payload, dict):
        raise BadInputError(f"{path}: expected a JSON object, got a {type(payload).__name__}")
    return payload


def check_directory(spec: str) -> tuple[Path, dict, Family]:
    """The directory of ``hf:DIR``, its config and its :class:`Family`, read as JSON only (nothing executed).

    Refused (:class:`BadInputError`): a missing directory or config; a file or shard that resolves outside
    the directory (:func:`_check_contained`); ``auto_map`` in any of its configs
    (remote code); weights that are not safetensors (a pickle can run code when unpickled); a model type
    outside :data:`FAMILIES`; an architecture without a classification head."""
    path = Path(spec[len(HF_PREFIX):] if is_huggingface(spec) else spec).expanduser()
    if not path.is_dir():
        raise BadInputError(f"hf: model {str(path)!r} is not a directory; give the folder written by "
                            "save_pretrained")
    if not (path / "config.json").is_file():
        raise BadInputError(f"{path} holds no config.json; give the folder written by save_pretrained")
    _check_contained(path)
    for name in REMOTE_CODE_FILES:
        if (path / name).is_file() and "auto_map" in _read_json(path / name):
            raise BadInputError(f"{path / name} asks for remote code (auto_map); hf: models never run code from the "
                                "model's folder: use a model type transformers itself implements")
    config = _read_json(path / "config.json")
    if not any((path / name).is_file() for name in SAFETENSORS_FILES):
        pickles = [name for name in PICKLE_FILES if (path / name).is_file()]
        if pickles:
            raise BadInputError(f"{path} holds its weights as a pickle ({', '.join(pickles)}), which can run code when "
                                "loaded; hf: models load safetensors only: save with save_pretrained(dir) "
                                "(safetensors by default)")
        raise BadInputError(f"{path} holds no model.safetensors; save the model with save_pretrained(dir)")
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type)
    if family is None:
        raise BadInputError(f"{path}: model type {model_type!r} is not supported by hf:; supported: "
                            f"{', '.join(FAMILIES)}")
    architectures = config.get("architectures") or []
    suffix = HEAD_SUFFIX[family.input]
    if not any(str(name).endswith(suffix) for name in architectures):
        raise BadInputError(f"{path}: architectures {architectures} hold no *{suffix}; audit a {family.input} "
                            f"classifier saved with save_pretrained (its head's weights included)")
    return path, config, family


def _check_contained(path: Path) -> None:
    """One containment rule for everything ``from_pretrained`` may read: each file of the directory (a symlink
    such as ``model.safetensors`` included) and each shard a sharded index names must resolve inside it, so
    that ``hf:DIR`` audits what DIR holds and never reads a file elsewhere."""
    root = path.resolve()
    named = [entry for entry in path.iterdir() if not entry.is_dir()]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(shard, str) for shard in weight_map.values()):
            raise BadInputError(f"{index}: expected a \"weight_map\" of parameter names to shard files")
        named += [path / shard for shard in sorted(set(weight_map.values()))]
    for file in named:
        if not file.resolve().is_relative_to(root):
            raise BadInputError(f"{file} resolves to {file.resolve()}, outside the model folder {root}; hf: reads "
                                "only files inside the folder: copy the weights into it")


def _import_transformers():
    try:
        import transformers
    except ImportError as error:
        raise BadInputError(f"hf: models need the transformers package ({error}); install with make install or "
                            "pip install 'attention-audit[hf]'") from None
    return transformers


def load_pretrained(spec: str) -> tuple[nn.Module, Family, Path]:
    """The classifier of ``hf:DIR`` in eval mode, with eager attention, from safetensors weights only; refused
    when any of its weights is missing from the file (a head initialised at random would be audited)."""
    path, _, family = check_directory(spec)
    transformers = _import_transformers()
    auto = (transformers.AutoModelForSequenceClassification if family.input == "text"
            else transformers.AutoModelForImageClassification)
    progress = transformers.utils.logging.is_progress_bar_enabled()
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.disable_progress_bar()  # the audit prints its own progress, or nothing
    # its load report (missing weights) would come before the one line this tool's own refusal says below
    transformers.utils.logging.set_verbosity_error()
    try:
        model, info = auto.from_pretrained(str(path), use_safetensors=True, trust_remote_code=False,
                                           local_files_only=True, attn_implementation="eager",
                                           output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise BadInputError(f"{path}: transformers cannot load it ({_first_line(error)})") from None
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
        if progress:
            transformers.utils.logging.enable_progress_bar()
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise BadInputError(f"{path}: the weights lack {short_listing(sorted(missing), 3)}; transformers would "
                            "initialise them at random: save the trained classifier with save_pretrained")
    return model.eval(), family, path


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# -- the detectors ---------------------------------------------------------------------------------------------


class HuggingFaceDetector(Detector):
    """What text and image models share: the wrapped model, its family and the self-attention modules whose
    weights ``output_attentions`` reports, in call order."""

    kind = "huggingface"

    def __init__(self, model: nn.Module, family: Family) -> None:
        super().__init__()
        self.model = model
        self.family = family
        self.n_classes = int(model.config.num_labels)
        self._attention_names: list[str] | None = None

    def attention_modules(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of the modules that compute the attention ``output_attentions`` reports, one per layer
        in call order: those that call the attention function on one forward pass (found once)."""
        if self._attention_names is None:
            calls: list[str] = []
            recorders = {module: (lambda w, allowed, name=name: calls.append(name) or w)
                         for name, module in self.model.named_modules() if hasattr(module, "config")
                         and hasattr(sys.modules[type(module).__module__], "eager_attention_forward")}
            with torch.no_grad(), module_edits(recorders):
                self(self._probe())
            self._attention_names = list(dict.fromkeys(calls))
        modules = dict(self.model.named_modules())
        return [(name, modules[name]) for name in self._attention_names]

    def _probe(self) -> torch.Tensor:
        raise NotImplementedError

    def _outputs(self, **inputs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        output = self.model(**inputs, output_attentions=True, return_dict=True)
        return output.logits, list(output.attentions)

    def hparams(self) -> dict:
        config = self.model.config
        return dict(model_type=config.model_type, architecture=type(self.model).__name__,
                    input_shape=list(self.input_shape), n_classes=self.n_classes,
                    layers=len(self.attention_modules()), heads=int(config.num_attention_heads),
                    attn_implementation="eager")


# the text tokeniser's names of special tokens (detectors.text_data) -> a Hugging Face tokenizer's attribute
SPECIAL_NAMES = {"[PAD]": "pad_token", "[UNK]": "unk_token", "[CLS]": "cls_token", "[MASK]": "mask_token",
                 "[SEP]": "sep_token"}


class PretrainedTokenizer:
    """A Hugging Face fast tokenizer with the surface of :class:`detectors.text_data.TextTokenizer`: ``encode``
    pads to :attr:`max_length` (special tokens included) and truncates there; :meth:`token_id` also answers the
    text tokeniser's names of special tokens (``[PAD]``, ``[UNK]``, ``[CLS]``, ``[MASK]``, ``[SEP]``) with the
    model's own (RoBERTa's ``<mask>`` for ``[MASK]``)."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self._tokenizer = tokenizer
        self.max_length = int(max_length)

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    @property
    def pad_id(self) -> int:
        return int(self._tokenizer.pad_token_id)

    @property
    def special_ids(self) -> list[int]:
        return sorted(int(i) for i in self._tokenizer.all_special_ids)

    def vocab(self) -> dict[str, int]:
        return dict(self._tokenizer.get_vocab())

    def token_id(self, token: str) -> int | None:
        own = getattr(self._tokenizer, SPECIAL_NAMES[token]) if token in SPECIAL_NAMES else token
        return None if own is None else self.vocab().get(str(own))

    def tokens(self, ids) -> list[str]:
        return self._tokenizer.convert_ids_to_tokens([int(i) for i in ids])

    def lengths(self, texts: list[str]) -> list[int]:
        """Each text's token count, special tokens included, untruncated."""
        return [len(ids) for ids in self._tokenizer(texts, truncation=False)["input_ids"]]

    def encode(self, texts: list[str], rationales: list[list[tuple[int, int]]] | None = None
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(ids, rationale_mask, truncated)`` as :meth:`detectors.text_data.TextTokenizer.encode` gives them."""
        full = np.array(self.lengths(texts))
        encoded = self._tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                                  return_offsets_mapping=True, return_special_tokens_mask=True)
        ids = np.array(encoded["input_ids"], dtype=np.int64)
        mask = None
        if rationales is not None:
            mask = np.zeros(ids.shape, dtype=bool)
            for row, spans in enumerate(rationales):
                pairs = zip(encoded["offset_mapping"][row], encoded["special_tokens_mask"][row])
                for position, ((start, end), special) in enumerate(pairs):
                    if not special and any(start < span_end and span_start < end for span_start, span_end in spans):
                        mask[row, position] = True
        return ids, mask, full > self.max_length


def load_tokenizer(path: Path, model: nn.Module, texts: list[str]) -> PretrainedTokenizer:
    """The directory's tokenizer (a fast one: ``tokenizer.json``, or a vocabulary transformers converts), its
    ``max_length`` the longest of ``texts`` capped by the model's positions and :data:`TEXT_MAX_LENGTH`."""
    transformers = _import_transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), trust_remote_code=False,
                                                               local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BadInputError(f"{path}: no tokenizer transformers can load ({_first_line(error)}); save it beside the "
                            "model with tokenizer.save_pretrained(dir)") from None
    if not getattr(tokenizer, "is_fast", False):
        raise BadInputError(f"{path}: the tokenizer is not a fast tokenizer (tokenizer.json); character offsets "
                            "need one")
    if tokenizer.pad_token_id is None:
        raise BadInputError(f"{path}: the tokenizer has no padding token; set one and save it again")
    limit = int(model.config.max_position_embeddings)
    if model.config.model_type == "roberta":  # positions start after padding_idx
        limit -= int(model.config.pad_token_id) + 1
    longest = max(PretrainedTokenizer(tokenizer, limit).lengths(texts), default=1)
    return PretrainedTokenizer(tokenizer, min(longest, limit, TEXT_MAX_LENGTH))


class HuggingFaceTextDetector(HuggingFaceDetector):
    """A sequence classifier over token ids (N, T), with the entry points of
    :class:`detectors.text.TextTransformer`; ``tokenizer`` is the directory's (:class:`PretrainedTokenizer`)."""

    def __init__(self, model: nn.Module, family: Family, tokenizer: PretrainedTokenizer) -> None:
        super().__init__(model, family)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_id
        self.frame_ids = TokenIds.of(tokenizer).frame_ids  # [SEP], </s>: no part of the message
        self.input_shape = (tokenizer.max_length,)
        self.token_map = TokenMap(token_of_input=torch.arange(tokenizer.max_length), n_tokens=tokenizer.max_length,
                                  cls_index=0)

    def _probe(self) -> torch.Tensor:
        """Token ids that are not all padding."""
        ids = torch.arange(self.input_shape[0], device=self.embedding.weight.device) % self.tokenizer.vocab_size
        return ids.unsqueeze(0)

    @property
    def embedding(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """True on every real token, False on padding: (N, T) bool."""
        return ids != self.pad_id

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The word embeddings (N, T, dim), before the model adds positions (and normalises)."""
        return self.embedding(ids)

    def forward_embeddings(self, embeddings: torch.Tensor, attention_mask: torch.Tensor, *,
                           with_attention: bool = False):
        """Logits from word embeddings (N, T, dim) and the mask (N, T); with ``with_attention`` also the
        attention list (N, heads, T, T) per layer."""
        width = message_width(attention_mask)
        inputs = dict(inputs_embeds=embeddings[:, :width], attention_mask=attention_mask[:, :width].long())
        if with_attention:
            return self._trimmed_outputs(embeddings.shape[1], **inputs)
        return self.model(**inputs, return_dict=True).logits

    # through the word embeddings of all T positions, so the embedding layer's output (which captum's layer
    # attributions hook) keeps the input's shape while the model runs on the message's columns
    def forward_with_attention(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        mask = self.attention_mask(ids) if attention_mask is None else attention_mask
        return self.forward_embeddings(self.embed(ids), mask, with_attention=True)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = self.attention_mask(ids) if attention_mask is None else attention_mask
        return self.forward_embeddings(self.embed(ids), mask)

    def _trimmed_outputs(self, tokens: int, **inputs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The model on a batch's :func:`message_width` columns, its attention padded back to ``tokens``."""
        logits, attentions = self._outputs(**inputs)
        return logits, padded_attentions(attentions, tokens)


RESAMPLING = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's codes, as image processors save them


class ImagePreprocess(nn.Module):
    """An image processor's steps on pixels in [0, 1], as torch operations: grey repeated to the model's
    channels, resized (antialiased, as PIL resizes), centre-cropped, normalised with its mean and std.
    ``out_size`` is the side the model sees; ``resized``/``crop`` are (height, width) or None."""

    def __init__(self, *, channels: int, resized: tuple[int, int] | None, mode: str,
                 crop: tuple[int, int] | None, mean: list[float] | None, std: list[float] | None) -> None:
        super().__init__()
        self.channels = channels
        self.resized = resized
        self.mode = mode
        self.crop = crop
        self.normalise = mean is not None
        self.register_buffer("mean", torch.tensor(mean or [0.0] * channels, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0] * channels, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.resized is not None and tuple(x.shape[-2:]) != self.resized:
            x = F.interpolate(x, size=self.resized, mode=self.mode, antialias=self.mode != "nearest",
                              align_corners=False if self.mode != "nearest" else None)
        if self.crop is not None:
            top, left = _crop_offset(tuple(x.shape[-2:]), self.crop)
            x = x[..., top:top + self.crop[0], left:left + self.crop[1]]
        return (x - self.mean) / self.std if self.normalise else x


def _crop_offset(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of a centre crop, as the image processors place it."""
    return (size[0] - crop[0]) // 2, (size[1] - crop[1]) // 2


def _side_pair(value: Any, what: str, path: Path) -> tuple[int, int]:
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    raise BadInputError(f"{path}: preprocessor_config.json {what} {value!r} is not {{'height', 'width'}}; hf: image "
                        "models need a fixed size")


def load_preprocess(path: Path, config, input_shape: tuple[int, ...]) -> tuple[ImagePreprocess, float | None]:
    """The directory's image processor (``preprocessor_config.json``, read as JSON) as torch operations, and the
    factor that brings stored pixels to [0, 1] (``rescale_factor``; None when the processor does not rescale)."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        raise BadInputError(f"{path} holds no preprocessor_config.json; save the image processor beside the model "
                            "with processor.save_pretrained(dir)")
    settings = _read_json(file)
    channels = int(config.num_channels)
    if input_shape[0] not in (1, channels):
        raise BadInputError(f"the images have {input_shape[0]} channels, the model takes {channels}")
    resized = _side_pair(settings.get("size"), "size", path) if settings.get("do_resize", False) else None
    crop = _side_pair(settings.get("crop_size"), "crop_size", path) if settings.get("do_center_crop", False) else None
    resample = settings.get("resample", 2)
    if resample not in RESAMPLING:
        raise BadInputError(f"{file}: resample {resample!r} is not one of PIL's nearest (0), bilinear (2), "
                            "bicubic (3)")
    seen = crop or resized or tuple(input_shape[1:])
    side = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    if tuple(seen) != tuple(int(s) for s in side):
        raise BadInputError(f"the processor gives {seen[0]}x{seen[1]} images, the model takes {side[0]}x{side[1]}")
    normalise = settings.get("do_normalize", False)
    preprocess = ImagePreprocess(channels=channels, resized=resized, mode=RESAMPLING[resample], crop=crop,
                                 mean=list(settings["image_mean"]) if normalise else None,
                                 std=list(settings["image_std"]) if normalise else None)
    factor = float(settings.get("rescale_factor", 1 / 255)) if settings.get("do_rescale", False) else None
    return preprocess, factor


def image_token_map(input_shape: tuple[int, int, int], preprocess: ImagePreprocess, patch: int,
                    leading_tokens: int) -> TokenMap:
    """Each input pixel's token: the patch its centre lands in after the resize and the crop (a pixel the crop
    cuts away goes to the nearest patch); the first ``leading_tokens`` tokens (CLS first) cover no pixel."""
    channels, height, width = input_shape
    resized = preprocess.resized or (height, width)
    top, left = _crop_offset(resized, preprocess.crop) if preprocess.crop else (0, 0)
    seen = preprocess.crop or resized
    rows = ((torch.arange(height) + 0.5) * resized[0] / height).floor().long() - top
    cols = ((torch.arange(width) + 0.5) * resized[1] / width).floor().long() - left
    grid = (seen[0] // patch, seen[1] // patch)
    rows = rows.clamp(0, seen[0] - 1) // patch
    cols = cols.clamp(0, seen[1] - 1) // patch
    patches = rows.unsqueeze(1) * grid[1] + cols.unsqueeze(0)
    token_of_input = patches.unsqueeze(0).expand(channels, height, width).contiguous() + leading_tokens
    return TokenMap(token_of_input, leading_tokens + grid[0] * grid[1], 0)


class HuggingFaceImageDetector(HuggingFaceDetector):
    """An image classifier over pixels (N, C, H, W) in [0, 1]; the processor's steps run inside."""

    def __init__(self, model: nn.Module, family: Family, preprocess: ImagePreprocess,
                 input_shape: tuple[int, int, int]) -> None:
        super().__init__(model, family)
        self.preprocess = preprocess
        self.input_shape = tuple(int(s) for s in input_shape)
        patch = int(model.config.patch_size)
        self.token_map = image_token_map(self.input_shape, preprocess, patch, family.leading_tokens)

    def _probe(self) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape, device=self.preprocess.mean.device)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self._outputs(pixel_values=self.preprocess(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.preprocess(x), return_dict=True).logits
