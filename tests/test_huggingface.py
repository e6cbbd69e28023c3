"""hf: models (issue 17): tiny BERT, DistilBERT, RoBERTa and ViT built from configs here, trained for a few
seconds on generated data, saved with save_pretrained and read back through hf: — nothing is downloaded."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from auditor.cli import cli
from detectors.errors import BadInputError
from exits import gate_exit_code

transformers = pytest.importorskip("transformers")

SIGNAL = "alarm"
FILLER = ("hello", "team", "the", "report", "is", "ready", "lunch", "at", "noon", "see", "you", "friday", "thanks",
          "for", "your", "order", "meeting", "moved")
TEXT_LABELS = {0: "benign", 1: "phishing"}
TEXT_FAMILIES = {
    "bert": dict(specials=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], cls="[CLS]", sep="[SEP]", pad="[PAD]",
                 unk="[UNK]", mask="[MASK]"),
    "distilbert": dict(specials=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], cls="[CLS]", sep="[SEP]",
                       pad="[PAD]", unk="[UNK]", mask="[MASK]"),
    "roberta": dict(specials=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], cls="<s>", sep="</s>", pad="<pad>",
                    unk="<unk>", mask="<mask>"),
}


def _messages(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Messages of 3-8 filler words; phishing exactly when the signal word is among them."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
        if i % 2:
            words.insert(int(rng.integers(0, len(words) + 1)), SIGNAL)
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts, labels


def _fast_tokenizer(spec: dict):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(spec["specials"] + sorted(set(FILLER) | {SIGNAL}))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=spec["unk"]))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{spec['cls']} $A {spec['sep']}",
        special_tokens=[(spec["cls"], vocab[spec["cls"]]), (spec["sep"], vocab[spec["sep"]])])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, cls_token=spec["cls"], sep_token=spec["sep"], pad_token=spec["pad"],
        unk_token=spec["unk"], mask_token=spec["mask"])


def _text_model(model_type: str, vocab_size: int, pad_id: int):
    common = dict(vocab_size=vocab_size, num_labels=2, id2label=TEXT_LABELS,
                  label2id={v: k for k, v in TEXT_LABELS.items()}, pad_token_id=pad_id, attn_implementation="eager")
    if model_type == "distilbert":
        config = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32,
                                               dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0, **common)
        return transformers.DistilBertForSequenceClassification(config)
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common)
    if model_type == "bert":
        return transformers.BertForSequenceClassification(transformers.BertConfig(**size))
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**size))


def _train(forward, parameters, x, y, *, steps: int, lr: float) -> None:
    optimiser = torch.optim.Adam(parameters, lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(forward(x), y).backward()
        optimiser.step()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """Folders written by save_pretrained: text (bert, distilbert, roberta) with the messages as a .csv, and
    vit with 1-channel 8x8 images (bright blob left: class 1) as a .npz, each trained for a few seconds."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    texts, labels = _messages(96, seed=0)
    rows = ["text,label"] + [f"{text},{TEXT_LABELS[label]}" for text, label in zip(texts, labels)]
    (root / "messages.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    y = torch.tensor(labels)
    for model_type, spec in TEXT_FAMILIES.items():
        tokenizer = _fast_tokenizer(spec)
        model = _text_model(model_type, len(tokenizer), tokenizer.pad_token_id)
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        _train(lambda ids: model(input_ids=ids, attention_mask=encoded["attention_mask"]).logits, model.parameters(),
               encoded["input_ids"], y, steps=40, lr=3e-3)
        model.eval().save_pretrained(root / model_type)
        tokenizer.save_pretrained(root / model_type)

    from detectors.huggingface import FAMILIES, ImagePreprocess

    rng = np.random.default_rng(1)
    images = rng.uniform(0.0, 0.3, size=(96, 1, 8, 8)).astype(np.float32)
    image_labels = np.arange(96) % 2
    for i, label in enumerate(image_labels):
        top = int(rng.integers(0, 5))
        left = int(rng.integers(0, 2)) if label else int(rng.integers(4, 6))
        images[i, 0, top:top + 3, left:left + 3] = 1.0
    np.savez(root / "images.npz", x=images, y=image_labels)
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=2,
                                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                    attn_implementation="eager")
    vit = transformers.ViTForImageClassification(config)
    preprocess = ImagePreprocess(channels=3, resized=(16, 16), mode="bilinear", crop=None, mean=[0.5] * 3,
                                 std=[0.5] * 3)
    _train(lambda x: vit(pixel_values=preprocess(x)).logits, vit.parameters(), torch.as_tensor(images),
           torch.as_tensor(image_labels), steps=40, lr=3e-3)
    vit.eval().save_pretrained(root / "vit")
    (root / "vit" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 16, "width": 16},
        "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}), encoding="utf-8")
    # DeiT, untrained: resize 10x10 -> 20x20, centre crop 16x16, CLS and distillation tokens before 16 patches
    deit = transformers.DeiTForImageClassification(transformers.DeiTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=2, attn_implementation="eager"))
    deit.eval().save_pretrained(root / "deit")
    (root / "deit" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DeiTImageProcessor", "do_resize": True, "size": {"height": 20, "width": 20},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": 16, "width": 16}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5]}), encoding="utf-8")
    np.savez(root / "rgb.npz", x=rng.integers(0, 256, size=(8, 3, 10, 10)).astype(np.float32), y=np.arange(8) % 2)
    assert set(FAMILIES) >= set(TEXT_FAMILIES) | {"vit", "deit"}
    return root


def _subject(root: Path, name: str, data: str, **options):
    from auditor.run.foreign_subject import ForeignOptions, load_foreign_subject

    return load_foreign_subject(f"hf:{root / name}", ForeignOptions(**options), data_spec=str(root / data),
                                label_column="label", max_samples=64, seed=0, device_name="cpu")


# -- the directory: what is refused before anything runs ---------------------------------------------------------


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def _copy_config(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (source / name).is_file():
            (target / name).write_bytes((source / name).read_bytes())
    return target


def test_pickle_weights_and_remote_code_are_refused_and_nothing_runs(hf_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pickled = _copy_config(hf_models / "bert", tmp_path / "pickled")
    with (pickled / "pytorch_model.bin").open("wb") as handle:
        pickle.dump({"payload": _Payload()}, handle)
    remote = _copy_config(hf_models / "bert", tmp_path / "remote")
    (remote / "model.safetensors").write_bytes((hf_models / "bert" / "model.safetensors").read_bytes())
    (remote / "evil_model.py").write_text("import pathlib; pathlib.Path('PWNED').write_text('x')\n")
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil_model.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    for folder, expected in ((pickled, "pickle (pytorch_model.bin)"), (remote, "remote code (auto_map)")):
        result = CliRunner().invoke(cli, ["run", "--model", f"hf:{folder}", "--data", str(hf_models / "messages.csv"),
                                          "--out", str(tmp_path / "o"), "--quiet"])
        assert result.exit_code == 2, result.output
        assert expected in result.output and len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "PWNED").exists()
    result = CliRunner().invoke(cli, ["run", "--model", f"hf:{tmp_path / 'nowhere'}", "--data", "digits",
                                      "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2 and "not a directory" in result.output


def _bert_folder(folder):
    """A tiny BERT classifier saved as save_pretrained does, built from a config (nothing downloaded)."""
    config = transformers.BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=8, max_position_embeddings=8, num_labels=2)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_an_hf_folder_without_its_head_is_one_line_and_no_load_report(tmp_path):
    import logging

    from safetensors.torch import load_file, save_file

    from detectors.huggingface import load_pretrained

    folder = _bert_folder(tmp_path / "bert")
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, folder / "model.safetensors",
              metadata={"format": "pt"})
    reported = []
    listener = logging.Handler()
    listener.emit = reported.append
    # transformers writes its load report through its own handler to the stderr it found first; listen beside it
    logging.getLogger("transformers").addHandler(listener)
    try:
        with pytest.raises(BadInputError, match="the weights lack classifier"):
            load_pretrained(f"hf:{folder}")
    finally:
        logging.getLogger("transformers").removeHandler(listener)
    assert not [record.getMessage() for record in reported]


def test_hf_weights_outside_the_folder_are_refused_alike_as_symlink_or_shard(tmp_path):
    from detectors.huggingface import check_directory

    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"weights")
    config = json.dumps({"model_type": "bert", "architectures": ["BertForSequenceClassification"]})
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "config.json").write_text(config, encoding="utf-8")
    (linked / "model.safetensors").symlink_to(outside)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(config, encoding="utf-8")
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"classifier.weight": "../elsewhere.safetensors"}}), encoding="utf-8")
    for folder in (linked, sharded):
        with pytest.raises(BadInputError, match="outside the model folder"):
            check_directory(f"hf:{folder}")
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "config.json").write_text(config, encoding="utf-8")
    (inside / "weights").mkdir()
    (inside / "weights" / "real.safetensors").write_bytes(b"weights")
    (inside / "model.safetensors").symlink_to(inside / "weights" / "real.safetensors")
    assert check_directory(f"hf:{inside}")[0] == inside  # a link that stays inside is the folder's own file


def test_help_does_not_import_transformers():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom auditor.cli import cli\n"
            "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
            "assert CliRunner().invoke(cli, ['run', '--help']).exit_code == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- labels ------------------------------------------------------------------------------------------------------


def test_labels_index_logits_match_id2label_or_are_refused_by_name():
    from auditor.run.foreign_subject import huggingface_labels

    config = transformers.BertConfig(num_labels=2, id2label={0: "benign", 1: "phishing"})
    names, y, positive = huggingface_labels(["phishing", "benign"], np.array([0, 1, 1]), 0, config)
    assert names == ["benign", "phishing"] and y.tolist() == [1, 0, 0] and positive == 1
    names, y, positive = huggingface_labels(["0", "1"], np.array([1, 0]), 1, config)
    assert y.tolist() == [1, 0] and positive == 1
    with pytest.raises(BadInputError, match="label 'spam' is none of the model's labels"):
        huggingface_labels(["benign", "spam"], np.array([0, 1]), None, config)
    with pytest.raises(BadInputError, match="label '2' does not index"):
        huggingface_labels(["0", "2"], np.array([0, 1]), None, config)


# -- text models: the text detector's contract ---------------------------------------------------------------------


@pytest.mark.parametrize("model_type", list(TEXT_FAMILIES))
def test_text_model_keeps_the_text_detector_contract(hf_models, model_type):
    from detectors.huggingface import HuggingFaceTextDetector
    from detectors.huggingface_editing import edited_attention

    subject = _subject(hf_models, model_type, "messages.csv")
    detector, data = subject.detector, subject.data
    assert isinstance(detector, HuggingFaceTextDetector)
    assert data.class_names == ["benign", "phishing"] and set(data.y.tolist()) == {0, 1}
    ids = torch.as_tensor(data.x[:16])
    assert ids.dtype == torch.int64 and ids.shape[1] == detector.input_shape[0]
    mask = detector.attention_mask(ids)
    assert (~mask).any(), "padding expected in a batch of messages of different lengths"
    logits, attentions = detector.forward_with_attention(ids)
    # the three paths are one model: ids, embeddings (what embedding-space attacks and captum use), plain forward
    assert torch.allclose(detector(ids), logits, atol=1e-5)
    through_embeddings, again = detector.forward_embeddings(detector.embed(ids), mask, with_attention=True)
    assert torch.allclose(through_embeddings, logits, atol=1e-5)
    assert len(attentions) == 2 and attentions[-1].shape == (16, 2, ids.shape[1], ids.shape[1])
    # padding receives exactly no attention; rows sum to 1
    assert attentions[-1].masked_select(~mask[:, None, None, :].expand_as(attentions[-1])).abs().max() == 0
    assert torch.allclose(attentions[-1].sum(-1), torch.ones(()), atol=1e-5)
    # attention is inside the autograd graph: the CLS row has a gradient with respect to the word embeddings
    embeddings = detector.embed(ids).detach().requires_grad_(True)
    _, layers = detector.forward_embeddings(embeddings, mask, with_attention=True)
    layers[-1][:, :, 0, 1].sum().backward()
    assert embeddings.grad.abs().sum() > 0
    # editing inside the forward: the identity edit keeps the logits (the recomputed output is the model's), a
    # uniform edit moves them
    modules = [module for _, module in detector.attention_modules()]
    with torch.no_grad(), edited_attention(modules, lambda w, allowed: w):
        assert torch.allclose(detector(ids), logits, atol=1e-5)
    with torch.no_grad(), edited_attention(modules, lambda w, allowed: allowed.expand_as(w) / allowed.expand_as(w)
                                           .sum(-1, keepdim=True)):
        assert not torch.allclose(detector(ids), logits, atol=1e-4)
    assert detector.model.config._attn_implementation == "eager"
    assert not any(hasattr(module, "_attention_audit_edit") for module in detector.model.modules())
    # the tokenizer carried with the model, with the text tokeniser's surface
    tokenizer = detector.tokenizer
    encoded, _, truncated = tokenizer.encode(["the report is ready " + SIGNAL])
    assert encoded.shape == (1, tokenizer.max_length) and not truncated.any()
    assert tokenizer.tokens(encoded[0][:1]) == [TEXT_FAMILIES[model_type]["cls"]]
    assert tokenizer.pad_id == detector.pad_id and tokenizer.pad_id in tokenizer.special_ids
    own = TEXT_FAMILIES[model_type]
    assert tokenizer.token_id("[MASK]") == tokenizer.vocab()[own["mask"]] != tokenizer.token_id("[UNK]")
    assert tokenizer.token_id("[PAD]") == tokenizer.pad_id and tokenizer.token_id(SIGNAL) is not None


def test_unmatched_text_label_is_refused_with_exit_2(hf_models, tmp_path):
    csv = tmp_path / "spam.csv"
    csv.write_text("text,label\nhello team,benign\nalarm at noon,spam\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "--model", f"hf:{hf_models / 'bert'}", "--data", str(csv),
                                      "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2 and "'spam'" in result.output, result.output


# -- image models ----------------------------------------------------------------------------------------------


def test_image_preprocessing_and_token_map_inside_the_model(hf_models):
    from detectors.huggingface import ImagePreprocess, image_token_map

    subject = _subject(hf_models, "vit", "images.npz")
    detector = subject.detector
    x = torch.as_tensor(subject.data.x[:4])
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    # the processor's steps: grey repeated to RGB, resized to 16x16, (x - 0.5) / 0.5
    expected = torch.nn.functional.interpolate(x.expand(-1, 3, -1, -1), size=(16, 16), mode="bilinear",
                                               antialias=True, align_corners=False) * 2 - 1
    assert torch.allclose(detector.preprocess(x), expected, atol=1e-6)
    # input pixel (y, x) of the 8x8 image lands in the 16x16 image's patch (y // 2, x // 2) of 4x4 patches
    token_map = detector.token_map
    assert token_map.n_tokens == 17 and token_map.cls_index == 0
    assert token_map.token_of_input[0, 0, 0] == 1 and token_map.token_of_input[0, 7, 7] == 16
    assert token_map.token_of_input[0, 2, 5] == 1 + (2 // 2) * 4 + 5 // 2
    # a centre crop (DeiT's resize then crop): pixels the crop cuts away go to the nearest patch
    crop = ImagePreprocess(channels=3, resized=(20, 20), mode="bicubic", crop=(16, 16), mean=None, std=None)
    cropped = image_token_map((1, 10, 10), crop, 4, leading_tokens=2)
    assert cropped.n_tokens == 18 and cropped.token_of_input[0, 0, 0] == 2 and cropped.token_of_input[0, 9, 9] == 17
    # attacks' gradients reach the pixels through the processor's steps and the eager attention
    pixels = x.clone().requires_grad_(True)
    _, attentions = detector.forward_with_attention(pixels)
    attentions[-1][:, :, 0, 1:].sum().backward()
    assert pixels.grad.abs().sum() > 0


def test_deit_reads_cls_with_a_distillation_token_and_0_255_pixels(hf_models):
    from detectors.huggingface_editing import edited_attention

    subject = _subject(hf_models, "deit", "rgb.npz")
    detector, x = subject.detector, torch.as_tensor(subject.data.x)
    assert float(x.max()) <= 1 and float(x.max()) > 0.9  # stored 0-255, brought to [0, 1] by rescale_factor
    logits, attentions = detector.forward_with_attention(x)
    assert attentions[-1].shape == (8, 2, 18, 18) and detector.token_map.n_tokens == 18
    assert int(detector.token_map.token_of_input.min()) == 2  # no pixel belongs to CLS or the distillation token
    modules = [module for _, module in detector.attention_modules()]
    assert len(modules) == 2
    with torch.no_grad(), edited_attention(modules, lambda w, allowed: w):
        assert torch.allclose(detector(x), logits, atol=1e-5)


def test_vit_is_audited_through_hf_end_to_end(hf_models, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "run", "--model", f"hf:{hf_models / 'vit'}", "--data", str(hf_models / "images.npz"), "--max-samples", "32",
        "--eps", "0.05", "--attacks", "pgd,attention-shift", "--explainers", "attention,rollout,grad-attention,random",
        "--save-explanations", "--out", str(out), "--quiet"])
    assert result.exit_code == gate_exit_code(out), result.output
    document = json.loads((out / "results.json").read_text())
    assert document["model"]["detector"] == "huggingface"
    assert document["model"]["attention_modules"][0].endswith("attention")
    assert document["model"]["attention_path_max_abs_logit_diff"] < 1e-5
    metrics = document["metrics"]
    assert metrics["clean.accuracy"]["value"] > 0.8
    for name in ("sanity.uniform_attention.prediction_kept", "sanity.flip_rate.attention",
                 "faithfulness.deletion_auc.rollout", "robust.accuracy.pgd@0.05"):
        assert name in metrics, sorted(document["skipped"].items())
    assert not any(name.startswith("sanity.") for name in document["skipped"])
    # the edit reaches the model: with uniform attention the blob's side is lost (a no-op edit would keep 1.0)
    assert metrics["sanity.uniform_attention.prediction_kept"]["value"] < 0.8


@pytest.mark.parametrize("model_type", list(TEXT_FAMILIES))
def test_text_model_is_audited_through_hf_end_to_end(hf_models, tmp_path, model_type):
    out = tmp_path / "out"
    table = tmp_path / "substitutions.json"
    table.write_text(json.dumps({word: [other for other in FILLER[:6] if other != word] for word in FILLER[:6]}))
    result = CliRunner().invoke(cli, [
        "run", "--model", f"hf:{hf_models / model_type}", "--data", str(hf_models / "messages.csv"),
        "--max-samples", "24", "--explainers", "attention,rollout,grad-attention,random", "--out", str(out),
        "--attacks", "typo,homoglyph,hotflip,attention-shift-sub,attention-hijack-sub", "--substitutions", str(table),
        "--quiet"])
    assert result.exit_code == gate_exit_code(out), result.output
    document = json.loads((out / "results.json").read_text())
    assert "stability.hijack_success.attention-hijack-sub@4" in document["metrics"]
    assert document["metrics"]["stability.prediction_kept.attention-hijack-sub@4"]["value"] == 1.0
    assert document["data"]["input_kind"] == "text" and document["model"]["detector"] == "huggingface"
    metrics = document["metrics"]
    assert metrics["clean.accuracy"]["value"] > 0.8
    for name in ("sanity.uniform_attention.prediction_kept", "sanity.flip_rate.attention",
                 "faithfulness.deletion_auc.attention", "faithfulness.deletion_auc.grad-attention",
                 # the label-preserving edits re-tokenised by the directory's tokenizer, and a table's
                 # substitutions, through the model's own embedding layer and attention
                 "robust.accuracy.typo@1", "robust.accuracy.homoglyph@2", "robust.accuracy.hotflip@1",
                 "robust.accuracy.worst-tokens@4", "stability.jsd.attention-shift-sub@2"):
        assert name in metrics, sorted(document["skipped"].items())
    assert [gate["metric"] for gate in document["gates"]]
    for gate in document["gates"]:
        # a verdict on 24 messages is not established (too few samples for its intervals), and says so
        assert gate["value"] is not None or (gate["kind"] == "verdict" and "too few samples" in gate["message"]), gate
    # a typo of the signal word leaves the tokenizer's vocabulary: the edit reaches the model
    assert metrics["robust.accuracy.typo@1"]["value"] < metrics["clean.accuracy"]["value"]
