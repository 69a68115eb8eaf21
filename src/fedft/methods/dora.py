"""dora: DoRA (Liu et al., ICML 2024), weight-decomposed low-rank adaptation: each adapted weight is split into a
magnitude (a trained vector) and a direction updated by LoRA. Hugging Face peft's `use_dora=True`; the same
targets, rank, export (a PEFT adapter of the plain backbone) and head as lora."""
from fedft.methods.base import METHODS
from fedft.methods.lora import Lora


@METHODS.register("dora")
class Dora(Lora):
    name = "dora"
    use_dora = True
