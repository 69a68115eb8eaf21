"""full: fine-tune every parameter (the communication-heavy reference)."""
from fedft.methods.base import METHODS, Method, freeze_all_but


@METHODS.register("full")
class Full(Method):
    name = "full"
    default_lr = 5e-5

    def apply(self, model):
        return freeze_all_but(model, lambda name: True)
