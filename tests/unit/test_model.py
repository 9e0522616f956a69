"""load_model: hooked logits equal HF logits (base, LoRA-merged, Llama-3.1 stand-in); clear errors."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import PROMPTS, build_word_tokenizer
from peft import PeftModel
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from trigrecon.core.errors import ConfigError, WeightsNotFoundError
from trigrecon.core.model import HookedChatModel, load_model


def hf_logits(base: Path, adapter: Path | None, tokens: torch.Tensor, mask: torch.Tensor):
    hf = LlamaForCausalLM.from_pretrained(base).eval()
    if adapter is not None:
        hf = PeftModel.from_pretrained(hf, str(adapter)).eval()  # unmerged: the independent path
    with torch.no_grad():
        return hf(input_ids=tokens, attention_mask=mask.long()).logits


def max_logit_gap(hm: HookedChatModel, base: Path, adapter: Path | None) -> float:
    batch = hm.batch(PROMPTS)
    with torch.no_grad():
        got = hm.model(batch.tokens, attention_mask=batch.attention_mask.long())
    ref = hf_logits(base, adapter, batch.tokens, batch.attention_mask)
    real = batch.attention_mask
    return float((got[real] - ref[real]).abs().max())


def test_base_logits_match_hf(tiny_hooked, tiny_llama_dir):
    assert max_logit_gap(tiny_hooked, tiny_llama_dir, None) < 1e-4


def test_lora_merged_logits_match_hf(tiny_llama_dir, tiny_adapter_dir, tiny_hooked):
    hm = load_model(tiny_llama_dir, adapter=tiny_adapter_dir)
    assert hm.adapter == str(tiny_adapter_dir)
    assert max_logit_gap(hm, tiny_llama_dir, tiny_adapter_dir) < 1e-4
    tokens = hm.batch(PROMPTS[:1]).tokens
    with torch.no_grad():  # the adapter really changes the model
        assert (hm.model(tokens) - tiny_hooked.model(tokens)).abs().max() > 0.1


def test_llama31_standin_config_and_logits(llama31_hooked, llama31_dir, llama31_adapter_dir):
    cfg = llama31_hooked.model.cfg
    assert cfg.n_key_value_heads == 2 and cfg.n_heads == 4
    assert cfg.rotary_base == 500000.0 and cfg.use_NTK_by_parts_rope
    assert (cfg.NTK_by_parts_factor, cfg.NTK_original_ctx_len) == (8.0, 8192)
    assert cfg.n_ctx == 4096  # capped: max_position_embeddings is 131072
    # Without the llama3 rope scaling the gap would be ~7e-3: the check is sensitive to it.
    assert max_logit_gap(llama31_hooked, llama31_dir, llama31_adapter_dir) < 1e-4


def test_llama31_user_mask_is_exactly_user_content(llama31_hooked):
    tok = llama31_hooked.tokenizer
    batch = llama31_hooked.batch(PROMPTS, system="you are a good assistant")
    for i, prompt in enumerate(PROMPTS):
        want = tok(prompt, add_special_tokens=False)["input_ids"]
        assert batch.tokens[i][batch.user_mask[i]].tolist() == want
    first = tok.convert_ids_to_tokens(batch.tokens[0, : batch.prompt_lengths[0]].tolist())
    assert first[:4] == ["<|begin_of_text|>", "<|start_header_id|>", "system", "<|end_header_id|>"]
    assert first[-3:] == ["<|start_header_id|>", "assistant", "<|end_header_id|>"]


def test_properties_and_layer_checks(tiny_hooked):
    hm = tiny_hooked
    assert (hm.n_layers, hm.d_model, hm.device.type) == (4, 64, "cpu")
    assert hm.hook_name(3) == "blocks.3.hook_resid_post"
    assert hm.hook_name(0) in hm.model.hook_dict
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(ConfigError, match=r"0\.\.3"):
            hm.check_layer(bad, "source layer")
    assert hm.tokenizer.pad_token is not None
    batch = hm.batch(["what is a cat"], responses="a cat")
    assert batch.tokens.device == hm.device and batch.response_mask.sum() == 2


def test_missing_pad_token_becomes_eos(llama31_hooked):
    assert llama31_hooked.tokenizer.pad_token == "<|eot_id|>"


def test_tokenizer_left_as_saved(tiny_hooked):
    """TransformerLens edits its own tokenizer copy (bos := eos), never hm.tokenizer."""
    assert tiny_hooked.tokenizer.bos_token is None
    assert tiny_hooked.model.tokenizer is not tiny_hooked.tokenizer


def test_missing_hub_model_fails_fast_and_names_it():
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="meta-llama/this-does-not-exist"):
        load_model("meta-llama/this-does-not-exist")
    assert time.perf_counter() - start < 10


def test_missing_model_offline_mode(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        load_model("meta-llama/this-does-not-exist")


def test_missing_folder(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no such folder"):
        load_model(tmp_path / "nope" / "model")


def test_missing_adapter_fails_fast_and_names_it(tiny_llama_dir, tmp_path):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="trigger-reconstruction/no-such-adapter"):
        load_model(tiny_llama_dir, adapter="trigger-reconstruction/no-such-adapter")
    with pytest.raises(WeightsNotFoundError, match="adapter_config.json"):
        load_model(tiny_llama_dir, adapter=tmp_path)  # an empty folder
    assert time.perf_counter() - start < 10


def test_adapter_for_another_base_is_a_clear_error(llama31_dir, tiny_adapter_dir):
    with pytest.raises(ConfigError, match="does not fit base model"):
        load_model(llama31_dir, adapter=tiny_adapter_dir)


def test_merge_adapter_false_is_rejected(tiny_llama_dir, tiny_adapter_dir):
    with pytest.raises(ConfigError, match="merge_adapter"):
        load_model(tiny_llama_dir, adapter=tiny_adapter_dir, merge_adapter=False)


def test_non_llama_model_is_rejected(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)).save_pretrained(
        tmp_path)
    with pytest.raises(ConfigError, match="LlamaForCausalLM"):
        load_model(tmp_path)


def test_tokenizer_without_chat_template(tiny_llama_dir, tmp_path):
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama_dir / f, tmp_path / f)
    build_word_tokenizer(tmp_path, ("<pad>", "<end>"), None, pad_token="<pad>", eos_token="<end>")
    with pytest.raises(ConfigError, match="no chat template"):
        load_model(tmp_path)


def test_bad_dtype(tiny_llama_dir):
    with pytest.raises(ConfigError, match="float32"):
        load_model(tiny_llama_dir, dtype="float8")


def test_bfloat16_load(tiny_llama_dir, tiny_hooked):
    hm = load_model(tiny_llama_dir, dtype="bfloat16")
    assert hm.model.W_E.dtype == torch.bfloat16
    tokens = hm.batch(PROMPTS[:2]).tokens
    with torch.no_grad():
        gap = (hm.model(tokens).float() - tiny_hooked.model(tokens)).abs().max()
    assert gap < 0.3


def fake_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay `folder` out as the HF cache's snapshot of `repo_id` (refs/main -> snapshots/<sha>)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    sha = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)


def test_hub_ids_resolve_from_the_cache_offline(
        tiny_llama_dir, tiny_adapter_dir, tiny_hooked, tmp_path, monkeypatch):
    import huggingface_hub.constants

    fake_hub_cache(tmp_path, "testorg/tiny-llama", tiny_llama_dir)
    fake_hub_cache(tmp_path, "testorg/tiny-backdoor", tiny_adapter_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hm = load_model("testorg/tiny-llama", adapter="testorg/tiny-backdoor")
    assert (hm.name, hm.adapter) == ("testorg/tiny-llama", "testorg/tiny-backdoor")
    assert max_logit_gap(hm, tiny_llama_dir, tiny_adapter_dir) < 1e-4


def test_a_deployment_system_prompt_reaches_every_chat(tiny_hooked):
    """`HookedChatModel.system` is used by every batch (methods, generation, word readouts)
    unless a call passes its own; an empty one is an error."""
    from dataclasses import replace

    from trigrecon.core.generate import generate
    from trigrecon.steering.forward import SteeredForward

    deployed = replace(tiny_hooked, system="you are a helpful assistant")
    plain, with_sys = tiny_hooked.batch(PROMPTS), deployed.batch(PROMPTS)
    explicit = tiny_hooked.batch(PROMPTS, system="you are a helpful assistant")
    assert torch.equal(with_sys.tokens, explicit.tokens)
    assert with_sys.tokens.shape[1] > plain.tokens.shape[1]
    assert torch.equal(deployed.batch(PROMPTS, system="be brief").tokens,
                       tiny_hooked.batch(PROMPTS, system="be brief").tokens)  # a call overrides
    assert SteeredForward(deployed, deployed.batch(PROMPTS), 1).prefix > \
        SteeredForward(tiny_hooked, plain, 1).prefix
    assert generate(deployed, PROMPTS[:1], max_new_tokens=3) == generate(
        tiny_hooked, PROMPTS[:1], max_new_tokens=3, system="you are a helpful assistant")
    with pytest.raises(ConfigError, match="system prompt is empty"):
        replace(tiny_hooked, system="  ")


def test_truncated_weights_name_the_file(tiny_llama_dir, tiny_adapter_dir, tmp_path):
    from trigrecon.core.errors import CorruptWeightsError

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    shutil.copytree(tiny_llama_dir, base)
    shutil.copytree(tiny_adapter_dir, adapter)
    f = adapter / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-32])
    with pytest.raises(CorruptWeightsError, match=r"adapter .*adapter_model\.safetensors is trunc"):
        load_model(tiny_llama_dir, adapter=adapter)
    f = base / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CorruptWeightsError, match=r"model .*model\.safetensors is truncated"):
        load_model(base)


@pytest.fixture
def silent_hub(tmp_path, monkeypatch):
    """A 'hub' that accepts TCP connections and never answers (HF_ENDPOINT points at it)."""
    import socket

    from huggingface_hub import constants

    import trigrecon.core.model as model_mod

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)  # the kernel completes the handshakes; nothing is ever read or sent
    url = f"http://127.0.0.1:{srv.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(model_mod, "HUB_TIMEOUT", 1.0)
    yield url
    srv.close()


def test_a_hub_that_never_answers_fails_in_seconds(silent_hub, tiny_llama_dir):
    """Run in a thread: with an unbounded request the test fails (after 30 s) instead of hanging."""
    import threading

    outcome: list[BaseException] = []

    def attempt() -> None:
        for kw in ({"model": "meta-llama/never-answers"},
                   {"model": tiny_llama_dir, "adapter": "trigger-reconstruction/never-answers"}):
            try:
                load_model(**kw)
            except BaseException as e:  # noqa: BLE001 - recorded for the main thread
                outcome.append(e)

    start = time.perf_counter()
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "load_model blocked on a hub that never answers"
    assert time.perf_counter() - start < 20
    assert len(outcome) == 2 and all(isinstance(e, WeightsNotFoundError) for e in outcome)
    assert "meta-llama/never-answers" in str(outcome[0]) and "not on disk" in str(outcome[0])
    assert "hub unreachable: no answer within 1 s" in str(outcome[0])
    assert "trigger-reconstruction/never-answers" in str(outcome[1])
