"""instruct: a causal LM learns to answer instructions (supervised fine-tuning on chats).

Every example is a chat whose last turn is the assistant's response, formatted with the model's own chat template.
The loss counts the response tokens only (the prompt's targets are -100): each example's mean token cross-entropy,
averaged over the batch's examples. A prompt that does not fit model.max_length with its response is cut from the
left (the response is never cut unless it alone is longer, then from its end); both are counted in the start line.

Evaluation on the held-out chats: the mean response-token loss over all their response tokens and its perplexity;
ROUGE-L (F, rouge-score's) of greedy answers to the first task.generate held-out prompts against their responses;
and, where those rows have short answers (wordnet-instruct's hypernyms), exact match: the answer, lower-cased, with
punctuation and extra spaces dropped, equals one of them.
"""
from __future__ import annotations

import math
import string

import numpy as np
import torch
from torch import nn

from fedft.errors import UsageError
from fedft.fl.hooks import Hook, hook_key
from fedft.fl.parts import part
from fedft.tasks.base import TASKS, Task

IGNORE = -100


class CausalLM(nn.Module):
    """The decoder with its own LM head (tied embeddings stay tied): model(**inputs) -> logits (B, T, V)."""

    modality, pooling = "text", None  # what the export records

    def __init__(self, lm: nn.Module, tokenizer) -> None:
        super().__init__()
        self.backbone = lm
        self.tokenizer = tokenizer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


class ChatExamples:
    """Token ids of prompt + response and their targets (IGNORE on the prompt), right-padded per batch."""

    def __init__(self, ids: list[torch.Tensor], targets: list[torch.Tensor], prompts: list[torch.Tensor],
                 answers: list[list[str]], references: list[str], pad_id: int) -> None:
        self.ids, self.targets, self.prompts = ids, targets, prompts
        self.answers, self.references, self.pad_id = answers, references, pad_id
        self.device = torch.device("cpu")
        self._lengths = np.array([len(x) for x in ids])

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self, rows=None) -> np.ndarray:
        return self._lengths

    def to(self, device) -> "ChatExamples":
        self.device = torch.device(device)
        return self

    def batch(self, idx) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        longest = int(self._lengths[idx].max())
        ids = torch.full((len(idx), longest), self.pad_id, dtype=torch.long)
        targets = torch.full((len(idx), longest), IGNORE, dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(self.ids[i])] = self.ids[i]
            targets[row, : len(self.targets[i])] = self.targets[i]
        mask = (torch.arange(longest)[None] < torch.as_tensor(self._lengths[idx])[:, None]).long()
        return ({"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}, targets.to(self.device))


def encode(chats: list[list[dict]], tokenizer, max_length: int, where: str = "") -> tuple[ChatExamples, dict]:
    """Chats -> ChatExamples. The prompt (every turn before the last, with the template's generation prompt) and the
    response (the rest of the formatted chat: the last turn and its end-of-turn marks) are tokenised apart, so no
    token straddles them and the mask is exact."""
    prompts, responses = [], []
    for n, chat in enumerate(chats):
        if not chat or chat[-1].get("role") != "assistant":
            raise UsageError(f"{where}row {n + 1}: the chat has no assistant turn at its end to learn")
        prompt = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(chat, tokenize=False)
        if not full.startswith(prompt):
            raise UsageError(f"{where}row {n + 1}: the model's chat template does not format the chat as its prompt "
                             f"followed by the response; the instruct task needs one that does")
        prompts.append(prompt)
        responses.append(full[len(prompt):])
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"] if responses else []
    ids, targets, kept_prompts, cut_prompts, cut_responses = [], [], [], 0, 0
    for p, r in zip(p_ids, r_ids):
        if len(r) >= max_length:  # the response alone fills it: keep one prompt token, cut the response's end
            r, cut_responses = r[: max_length - 1], cut_responses + 1
        if len(p) + len(r) > max_length:
            p, cut_prompts = p[len(p) + len(r) - max_length:], cut_prompts + 1  # from the left
        ids.append(torch.tensor(p + r, dtype=torch.long))
        targets.append(torch.tensor([IGNORE] * len(p) + r, dtype=torch.long))
        kept_prompts.append(torch.tensor(p, dtype=torch.long))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    refs = [c[-1]["content"] for c in chats]
    return (ChatExamples(ids, targets, kept_prompts, [], refs, int(pad)),
            {"prompts_cut": cut_prompts, "responses_cut": cut_responses})


def normalise(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def exact(answer: str, accepted: list[str]) -> bool:
    """The exact-match rule: the normalised answer equals one normalised accepted answer."""
    return normalise(answer) in {normalise(a) for a in accepted}


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the sum of the response tokens' cross-entropy (fp32) and their number."""
    # the targets shift left, not the logits (as transformers' own loss does): one contiguous (B*T, V) cross-entropy,
    # no copy of the logits; measured 2.49 -> see benchmarks/llm.py against slicing logits[:, :-1]
    t = nn.functional.pad(targets[:, 1:], (0, 1), value=IGNORE)
    tok = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), t.reshape(-1),
                                      ignore_index=IGNORE, reduction="none").view(t.shape)
    mask = t != IGNORE
    return (tok * mask).sum(1), mask.sum(1)


@TASKS.register("instruct")
class Instruct(Task):
    name = "instruct"
    causal = True  # load model.name as a causal LM
    metrics = ("perplexity", "rougeL", "exact_match")
    headline = "loss"  # what curves.png plots: the held-out response-token loss

    def __init__(self, generate: int = 32, max_new_tokens: int = 48) -> None:
        self.generate, self.max_new_tokens = generate, max_new_tokens

    @property
    def raw(self):
        from fedft.data import Instructions

        return (Instructions,)

    def configure(self, config) -> "Instruct":
        self.generate, self.max_new_tokens = config.task.generate, config.task.max_new_tokens
        return self

    def check(self, config, backbone) -> None:
        why = {"head": "it trains a classification head, which a causal LM does not have",
               "bias": "the decoder has no bias parameters to train" if not any(
                   n.endswith(".bias") for n, _ in backbone.model.named_parameters()) else "",
               "adapter": "its bottleneck adapters are placed for encoders only",
               "prompt": "prompt tuning is written for the classifier's pooling",
               "layers": "selective layers is written for the classifier"}.get(config.method.name, "")
        if why:
            raise UsageError(f"method.name = {config.method.name!r} with the instruct task: {why}; use lora, "
                             f"lora_sb, dora or full")
        if config.proxy.kind != "none":
            raise UsageError("proxy.kind with the instruct task: FedPFT/FedOT build sub-models of encoders only")
        if config.fl.parallel_clients > 1:
            raise UsageError("fl.parallel_clients > 1 with the instruct task: batching clients (vmap) takes one "
                             "label per example; train them one by one (fl.parallel_clients = 1)")
        if config.data.client_test_fraction:
            raise UsageError("data.client_test_fraction with the instruct task: per-client scores are "
                             "classification accuracies; not supported yet")

    def build(self, config, backbone, classes):
        return CausalLM(backbone.model, backbone.tokenizer)

    def examples(self, raw, backbone, config):
        examples, cut = encode(raw.chats, backbone.tokenizer, config.model.max_length, f"data.name = "
                               f"{config.data.name!r}: ")
        examples.answers = raw.answers
        examples.questions = [c[-2]["content"] if len(c) > 1 else "" for c in raw.chats]  # for results' samples
        examples.cut = cut
        return examples

    def loss(self, outputs, targets, reduction="mean"):
        total, count = token_losses(outputs, targets)
        per = total / count.clamp(min=1)
        return per if reduction == "none" else per.sum() if reduction == "sum" else per.mean()

    @torch.inference_mode()
    def evaluate(self, model, data, batch_size=32, precision="fp32", profiles=None):
        from fedft.fl.precision import autocast, lowered

        model.eval()
        device = next(model.parameters()).device
        order = np.argsort(data.lengths(), kind="stable")
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.long, device=device)
        with lowered(model, precision, trainable=True):  # every weight cast to bf16 once per evaluation
            for i in range(0, len(order), batch_size):
                inputs, targets = data.batch(order[i: i + batch_size])
                with autocast(device, precision):
                    logits = model(**inputs)
                s, c = token_losses(logits, targets)
                total += s.sum()
                count += c.sum()
        loss = float(total) / max(int(count), 1)
        out = {"accuracy": None, "loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if self.generate:
            answers = self.answer(model, data, range(min(self.generate, len(data))), precision)
            self.answers = answers  # the last evaluation's (results.json's samples)
            out.update(score(answers, data, range(len(answers))))
        return out

    def answer(self, model, data, rows, precision: str = "fp32") -> list[str]:
        """Greedy answers to the prompts of `rows` (batches of 16, left-padded)."""
        from fedft.fl.precision import autocast, lowered

        lm = _causal(model)
        tok = lm.tokenizer
        device = next(model.parameters()).device
        rows = list(rows)
        out = []
        with lowered(model, precision, trainable=True):  # every weight cast to bf16 once, not per token
            for i in range(0, len(rows), 16):
                prompts = [data.prompts[j] for j in rows[i: i + 16]]
                longest = max(len(p) for p in prompts)
                ids = torch.full((len(prompts), longest), data.pad_id, dtype=torch.long)
                mask = torch.zeros((len(prompts), longest), dtype=torch.long)
                for r, p in enumerate(prompts):
                    ids[r, longest - len(p):], mask[r, longest - len(p):] = p, 1
                with autocast(device, precision):
                    gen = lm.backbone.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                               max_new_tokens=self.max_new_tokens, do_sample=False,
                                               pad_token_id=data.pad_id, eos_token_id=tok.eos_token_id)
                out += [tok.decode(g[longest:], skip_special_tokens=True).strip() for g in gen]
        return out


def score(answers: list[str], data, rows) -> dict:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rows = list(rows)
    rouge = [scorer.score(data.references[j], a)["rougeL"].fmeasure for j, a in zip(rows, answers)]
    graded = [(a, data.answers[j]) for j, a in zip(rows, answers) if data.answers and data.answers[j]]
    return {"rougeL": float(np.mean(rouge)) if rouge else None,
            "exact_match": float(np.mean([exact(a, acc) for a, acc in graded])) if graded else None}


def _causal(model: nn.Module) -> CausalLM:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


SAMPLES = 3  # held-out prompts shown in results.json with the base model's and the trained model's answers


class Samples(Hook):
    """results.json's final.samples: the first held-out prompts, their references, and the answers of the base
    model and of the model as the last evaluation left it. Its checkpoint state keeps the base model's figures, so a
    resumed run does not evaluate the base model again (greedy answers: minutes on a real model)."""

    def __init__(self, task: Instruct, samples: list[dict], base: dict) -> None:
        self.task, self.samples, self.base = task, samples, base

    def finish(self, out_dir, rounds):
        for i, s in enumerate(self.samples):
            s["trained"] = self.task.answers[i]
        return {"samples": self.samples}

    def state(self) -> dict:
        return {"base": self.base, "samples": [{k: s[k] for k in ("prompt", "reference", "base")}
                                               for s in self.samples]}


@part(2)
def instruct_base(b) -> None:
    """results.json's `base`: the same metrics for the model before the first round; and where the weights came
    from (a converted package model)."""
    exp = b.exp
    if not isinstance(exp.task, Instruct):
        return
    from fedft.models.causal import weights_note

    exp.task.configure(exp.config)
    note = weights_note(exp.model_source) if exp.model_source else None
    if note:
        b.record["model_weights"] = note
    b.record["prompts"] = {"train": getattr(exp.train, "cut", {}), "test": getattr(exp.test, "cut", {})}
    saved = ((b.fed.resume or {}).get("parts") or {}).get(hook_key(Samples)) or {}
    if "base" in saved:  # resumed: the base model was evaluated before the first round
        b.record["base"], b.final["samples"] = saved["base"], saved["samples"]
    else:
        b.record["base"] = exp.task.evaluate(exp.model, exp.test, precision=b.pool.cfg.precision)
        shown = min(SAMPLES, len(getattr(exp.task, "answers", [])))
        b.final["samples"] = [{"prompt": exp.test.questions[i], "reference": exp.test.references[i],
                               "base": exp.task.answers[i]} for i in range(shown)]
        b.log(f"base model: held-out loss {b.record['base']['loss']:.4f}, ROUGE-L {b.record['base'].get('rougeL')}")
    b.fed.hooks.append(Samples(exp.task, b.final["samples"], b.record["base"]))
