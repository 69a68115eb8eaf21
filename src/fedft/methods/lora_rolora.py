"""method.variant = "rolora": RoLoRA (Chen et al., "Robust Federated Finetuning of LLMs via Alternating Optimization
of LoRA", 2024). Rounds alternate: in odd rounds the clients train and send B (A fixed), in even rounds A (B fixed);
the head trains every round. Each aggregate then averages one factor with the other shared and fixed, so the mean
of the products is the product of the means: mean(B_i) A = mean(B_i A). B comes first because it starts at zero
(with B = 0 the gradient of A is zero). Uploads carry one factor (and the head) only.
"""
from __future__ import annotations

from fedft.fl.hooks import Hook
from fedft.fl.parts import part


def trained(names, rnd: int) -> list[str]:
    """What trains in round `rnd`: B (odd rounds) or A (even rounds), and everything that is not LoRA."""
    skip = ".lora_A." if rnd % 2 == 1 else ".lora_B."
    return [n for n in names if skip not in n]


class Alternate(Hook):
    order = 20

    def __init__(self, names) -> None:
        self.names = sorted(names)

    def configure(self, rnd, instructions, log):
        for ins in instructions:
            ins.train = trained(self.names if ins.train is None else ins.train, rnd)
        return instructions


@part(45)
def rolora(b) -> None:
    if b.exp.config.method.variant == "rolora":
        b.fed.hooks.append(Alternate(b.exp.params))
