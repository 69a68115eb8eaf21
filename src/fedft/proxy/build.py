"""Sub-FM construction (FedPFT, section 3 of methods.md): the proxy clients train instead of the full model.

fedpft: layers in keep_layers stay whole; in every other layer attention stays as is and the FFN keeps the k
neurons with the largest saliency ||[W_in[j,:], W_out[:,j]]||_2, in their original order (biases copied).
fedot (the offsite-tuning baseline): the layers in drop_layers are removed; the rest stay whole.

A sub-FM is saved as a Hugging Face model folder plus `proxy.json` (which layer and neurons of the full
model each part came from), and loaded back with `load_proxy`.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from fedft.errors import UsageError
from fedft.folders import write_folder
from fedft.models.arch import FFN_MODULES, layer_list_name, lookup, transformer_layers


@dataclass
class ProxyInfo:
    kind: str  # "fedpft" | "fedot"
    source: str  # the full model it was made from
    layer_map: list[int]  # sub-FM layer i is full-FM layer layer_map[i]
    neurons: dict[int, list[int]] = field(default_factory=dict)  # compressed sub layer -> kept neurons (ascending)
    full_params: int = 0  # parameters of the full FM's transformer layers
    sub_params: int = 0  # ... and of the sub-FM's
    ffn_width: int = 0  # d_ff of the full FM
    full_layers: int = 0  # layers of the full FM
    model_type: str = ""  # the full FM's architecture
    hidden_size: int = 0
    distill: dict | None = None  # layer-level alignment: steps, loss before and after
    server_data: dict | None = None  # the server's alignment data: source, examples, those left out as run data

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = "proxy.json") -> "ProxyInfo":
        try:
            raw = json.loads(text)
            raw["neurons"] = {int(k): [int(j) for j in v] for k, v in raw["neurons"].items()}
            info = cls(**raw)
            if not info.layer_map or info.kind not in ("fedpft", "fedot"):
                raise ValueError("no layers or unknown kind")
            return info
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"{where} is not a valid sub-model description ({type(e).__name__}: {e}); rebuild it "
                             f"with `fedft proxy build`") from None


def ffn_pair(layer: nn.Module, model_type: str) -> tuple[nn.Linear, nn.Linear]:
    """(W_in, W_out) of one transformer layer."""
    names = lookup(FFN_MODULES, model_type, "proxy (FedPFT)")
    return layer.get_submodule(names[0]), layer.get_submodule(names[1])


def saliency(w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """(d_ff,): ||[W_in[j,:], W_out[:,j]]||_2 for W_in (d_ff, H) and W_out (H, d_ff)."""
    w_in, w_out = w_in.detach().float(), w_out.detach().float()
    return (w_in.pow(2).sum(1) + w_out.pow(2).sum(0)).sqrt()


def top_neurons(scores: torch.Tensor, k: int) -> list[int]:
    """The k highest-scoring neurons, in their original order (ties: the lower index)."""
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices[:k]
    return sorted(order.tolist())


def resolve_layers(key: str, layers: list[int], n: int) -> list[int]:
    """Layer indices (negative counts from the end) -> 0..n-1, each checked."""
    out = []
    for i in layers:
        if not -n <= i < n:
            raise UsageError(f"{key} = {layers}: layer {i} is out of range; the model has {n} layers "
                             f"(0..{n - 1}, or -{n}..-1 from the end)")
        out.append(i % n)
    return sorted(set(out))


def shrink_ffn(layer: nn.Module, model_type: str, keep: list[int]) -> None:
    """Replace the layer's FFN by the neurons `keep` of it (in place)."""
    w_in, w_out = ffn_pair(layer, model_type)
    idx = torch.as_tensor(keep, dtype=torch.long, device=w_in.weight.device)
    new_in = nn.Linear(w_in.in_features, len(keep), bias=w_in.bias is not None).to(w_in.weight)
    new_out = nn.Linear(len(keep), w_out.out_features, bias=w_out.bias is not None).to(w_out.weight)
    with torch.no_grad():
        new_in.weight.copy_(w_in.weight[idx])
        if w_in.bias is not None:
            new_in.bias.copy_(w_in.bias[idx])
        new_out.weight.copy_(w_out.weight[:, idx])
        if w_out.bias is not None:
            new_out.bias.copy_(w_out.bias)
    names = lookup(FFN_MODULES, model_type, "proxy (FedPFT)")
    for name, module in zip(names, (new_in, new_out)):
        parent, _, attr = name.rpartition(".")
        setattr(layer.get_submodule(parent) if parent else layer, attr, module)


def layer_params(model: nn.Module) -> int:
    return sum(p.numel() for p in transformer_layers(model).parameters())


def build_sub_fm(full: nn.Module, kind: str, keep_layers: list[int], ffn_neurons: int = 0,
                 drop_layers: list[int] | None = None, source: str = "") -> tuple[nn.Module, ProxyInfo]:
    """A compressed copy of the backbone `full` (left untouched) and where each of its parts came from."""
    model_type = full.config.model_type
    lookup(FFN_MODULES, model_type, "proxy (FedPFT)")
    layers = transformer_layers(full)
    n = len(layers)
    keep = resolve_layers("proxy.keep_layers", keep_layers, n)
    width = ffn_pair(layers[0], model_type)[0].out_features
    sub = copy.deepcopy(full)
    sub_layers = transformer_layers(sub)
    info = ProxyInfo(kind, source, list(range(n)), full_params=layer_params(full), ffn_width=width, full_layers=n,
                     model_type=model_type, hidden_size=int(full.config.hidden_size))
    if len(keep) == n:
        raise UsageError(f"proxy.keep_layers = {keep_layers}: keeps all {n} layers whole, so the sub-model would be "
                         f"the full model; keep fewer")
    if kind == "fedpft":
        k = ffn_neurons or max(1, width // 4)
        if not 1 <= k <= width:
            raise UsageError(f"proxy.ffn_neurons = {ffn_neurons}: must be between 1 and the FFN width {width}")
        for i in range(n):
            if i in keep:
                continue
            w_in, w_out = ffn_pair(layers[i], model_type)
            info.neurons[i] = top_neurons(saliency(w_in.weight, w_out.weight), k)
            shrink_ffn(sub_layers[i], model_type, info.neurons[i])
    elif kind == "fedot":
        rest = [i for i in range(n) if i not in keep]
        drop = resolve_layers("proxy.drop_layers", drop_layers, n) if drop_layers else rest[1::2]
        if not drop:
            raise UsageError(f"proxy.kind = 'fedot': nothing to drop (the default drops every second layer not in "
                             f"proxy.keep_layers = {keep_layers}); name the layers in proxy.drop_layers")
        if set(drop) & set(keep):
            raise UsageError(f"proxy.drop_layers = {drop_layers}: layers {sorted(set(drop) & set(keep))} are also "
                             f"in proxy.keep_layers = {keep_layers}")
        if len(drop) >= n:
            raise UsageError(f"proxy.drop_layers = {drop_layers}: would drop every layer")
        info.layer_map = [i for i in range(n) if i not in drop]
        kept = nn.ModuleList([sub_layers[i] for i in info.layer_map])
        parent, attr = _layer_list_owner(sub)
        setattr(parent, attr, kept)
        sub.config.num_hidden_layers = len(kept)
        if getattr(sub.config, "stage_names", None):  # DINOv2 names its layers as backbone stages: renumber them
            sub.config.stage_names = ["stem"] + [f"stage{i}" for i in range(1, len(kept) + 1)]
            sub.config.out_features = [sub.config.stage_names[-1]]
    else:
        raise UsageError(f"proxy.kind = {kind!r}: choose fedpft or fedot")
    info.sub_params = layer_params(sub)
    return sub, info


def _layer_list_owner(model: nn.Module) -> tuple[nn.Module, str]:
    parent, _, attr = layer_list_name(model).rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


def save_proxy(sub: nn.Module, info: ProxyInfo, out: Path, tokenizer=None, image_norm=None) -> Path:
    """Write the sub-FM as a Hugging Face folder + proxy.json; the folder appears whole or not at all."""
    out = Path(out)
    if out.exists():
        raise UsageError(f"--out {str(out)!r} already exists; choose another folder")
    from safetensors.torch import save_file

    def save(tmp: Path) -> None:
        sub.config.save_pretrained(str(tmp))  # the weights under the names this transformers version gives them
        save_file({k: v.detach().contiguous() for k, v in sub.state_dict().items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if image_norm is not None:
            (tmp / "preprocessor_config.json").write_text(json.dumps(
                {"image_mean": image_norm[0], "image_std": image_norm[1]}))
        (tmp / "proxy.json").write_text(info.to_json())

    return write_folder(out, save)


def is_proxy_dir(path: str | Path) -> bool:
    return (Path(path) / "proxy.json").is_file()


def load_proxy(path: str | Path, key: str = "proxy.path") -> tuple[nn.Module, ProxyInfo]:
    """A sub-FM folder written by save_proxy -> (the backbone module, its ProxyInfo). `key` names the setting
    that gave the folder, for messages."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    path = Path(path)
    if not is_proxy_dir(path):
        raise UsageError(f"{key} = {str(path)!r}: not a sub-model folder (no proxy.json); make one with "
                         f"`fedft proxy build`")
    info = ProxyInfo.from_json((path / "proxy.json").read_text(), f"{key} = {str(path)!r}: proxy.json")
    try:
        model = AutoModel.from_config(AutoConfig.from_pretrained(str(path)))
        state = load_file(str(path / "model.safetensors"))
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"{key} = {str(path)!r}: cannot load the sub-model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    layers = transformer_layers(model)
    for i, keep in info.neurons.items():
        if i >= len(layers):
            raise UsageError(f"{key} = {str(path)!r}: proxy.json names layer {i}; the model has {len(layers)}")
        shrink_ffn(layers[i], model.config.model_type, keep)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise UsageError(f"{key} = {str(path)!r}: the weights do not fit proxy.json "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if missing:  # a pooler the saved model did not have (mean pooling removed it): leave it out here too
        model.pooler = None
    return model.eval(), info
