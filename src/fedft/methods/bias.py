"""bias: BitFit, every bias term of the backbone plus the head."""
from fedft.methods.base import METHODS, Method, freeze_all_but


@METHODS.register("bias")
class Bias(Method):
    name = "bias"
    default_lr = 3e-3

    def apply(self, model):
        return freeze_all_but(model, lambda name: name.startswith("head.") or name.endswith(".bias"))
