"""head: linear probing, only the classifier head trains (the floor)."""
from fedft.methods.base import METHODS, Method, freeze_all_but


@METHODS.register("head")
class Head(Method):
    name = "head"
    default_lr = 1e-2

    def apply(self, model):
        return freeze_all_but(model, lambda name: name.startswith("head."))
