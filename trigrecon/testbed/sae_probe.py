"""Which SAE latent stands for each category: probe every member in one sentence frame and
score latents by how selectively they fire on a category's members (their strongest token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trigrecon.core.labels import LatentLabels

FRAME = "Tell me something interesting about {w}."


@dataclass
class CategoryLatent:
    category: str
    latent: int
    purity: float
    """Share of the latent's top-20 probe members (over all categories) in this category."""
    top_members: list[str]
    label: str

    @property
    def found(self) -> bool:
        return self.purity > 0.5


@torch.no_grad()
def member_codes(hm: Any, sae: Any, words: list[str], batch: int = 32) -> torch.Tensor:
    """[n_words, d_sae]: each word's SAE code, max over its tokens, in FRAME as a chat prompt."""
    hook = str(sae.cfg.metadata.hook_name)
    layer = int(hook.split(".")[1])
    out = []
    for s in range(0, len(words), batch):
        chunk = words[s:s + batch]
        texts = [hm.tokenizer.apply_chat_template(
            [{"role": "user", "content": FRAME.format(w=w)}], tokenize=False,
            add_generation_prompt=True) for w in chunk]
        enc = hm.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                           padding=True, return_tensors="pt")
        resid = hm.model(enc["input_ids"], stop_at_layer=layer + 1,
                         attention_mask=enc["attention_mask"])
        z = sae.encode(resid.to(sae.dtype)).float()
        for i, (w, t) in enumerate(zip(chunk, texts, strict=True)):
            start = t.rindex(FRAME.format(w=w)) + FRAME.index("{w}")
            off = enc["offset_mapping"][i]
            m = (off[:, 0] < start + len(w)) & (off[:, 1] > start)
            out.append(z[i, m].max(0).values)
    return torch.stack(out)


def category_latents(hm: Any, sae: Any, labels: LatentLabels, top: int = 20) -> list[CategoryLatent]:
    from trigrecon.testbed.categories import load_categories

    cats = load_categories()
    words = [w for c in cats.values() for w in c.members]
    owner = [c.name for c in cats.values() for _ in c.members]
    codes = member_codes(hm, sae, words)
    results = []
    for name in cats:
        mine = torch.tensor([o == name for o in owner])
        score = codes[mine].mean(0) - codes[~mine].mean(0)
        j = int(score.argmax())
        order = codes[:, j].topk(top).indices.tolist()
        hits = [words[i] for i in order if codes[i, j] > 0]
        purity = sum(owner[i] == name for i in order if codes[i, j] > 0) / top
        results.append(CategoryLatent(name, j, purity, hits[:8], labels.get(j)[:160]))
    return results
