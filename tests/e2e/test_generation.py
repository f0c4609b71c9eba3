"""Generation and scoring against transformers (float32): greedy decode token-identical for 32 new tokens."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_tiny import load_torch, make_tiny, torch_logits
from hyperlora_jax.generation import generate, score
from hyperlora_jax.io.hf_load import load_model
from test_lora_peft import make_peft
from hyperlora_jax.io.peft_io import import_peft


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def tiny(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    d = make_tiny(request.param, str(root / "m"), max_position_embeddings=128)
    cfg, params = load_model(d)
    return root, d, cfg, params, load_torch(d)


def hf_greedy(model, prompts, n, adapter_model=None):
    m = adapter_model or model
    length = max(map(len, prompts))
    ids = np.zeros((len(prompts), length), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    with torch.no_grad():
        out = m.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=n,
                         min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, length:].numpy().tolist()


def test_greedy_matches_transformers_left_padded(tiny):
    root, d, cfg, params, ref = tiny
    rng = np.random.default_rng(0)
    prompts = [rng.integers(5, cfg.vocab_size, n).tolist() for n in (5, 11, 8)]
    ours = generate(params, cfg, prompts, max_new_tokens=32, stop_tokens=[])
    assert all(len(o) == 32 for o in ours)
    assert ours == hf_greedy(ref, prompts, 32)


def test_greedy_with_per_example_adapters(tiny):
    import peft
    from hyperlora_jax.lora import stack_adapters
    root, d, cfg, params, ref = tiny
    dirs = [make_peft(d, str(root / f"g{i}"), seed=10 + i) for i in range(2)]
    adapter = stack_adapters([import_peft(x, cfg) for x in dirs])
    rng = np.random.default_rng(1)
    prompts = [rng.integers(5, cfg.vocab_size, n).tolist() for n in (6, 9)]
    ours = generate(params, cfg, prompts, adapter=adapter, max_new_tokens=32, stop_tokens=[])
    for i, x in enumerate(dirs):
        pm = peft.PeftModel.from_pretrained(load_torch(d), x).eval()
        assert ours[i] == hf_greedy(None, [prompts[i]], 32, adapter_model=pm)[0]


def test_batched_equals_one_by_one_with_and_without_adapters(tiny):
    """One left-padded batch of prompts of different lengths (also padded further with ``pad_to``) generates what
    each prompt generates alone, for the base model and with one adapter row per prompt."""
    from hyperlora_jax.lora import stack_adapters
    root, d, cfg, params, ref = tiny
    loras = [import_peft(make_peft(d, str(root / f"b{i}"), seed=20 + i), cfg) for i in range(3)]
    rng = np.random.default_rng(2)
    prompts = [rng.integers(5, cfg.vocab_size, n).tolist() for n in (3, 17, 9)]
    for per_row in (None, loras):
        adapter = None if per_row is None else stack_adapters(per_row)
        alone = [generate(params, cfg, [p], adapter=None if per_row is None else stack_adapters([per_row[i]]),
                          max_new_tokens=12, stop_tokens=[])[0] for i, p in enumerate(prompts)]
        assert generate(params, cfg, prompts, adapter=adapter, max_new_tokens=12, stop_tokens=[]) == alone
        assert generate(params, cfg, prompts, adapter=adapter, max_new_tokens=12, stop_tokens=[], pad_to=40) == alone


def test_stop_tokens_and_sampling(tiny):
    root, d, cfg, params, ref = tiny
    prompt = [7, 8, 9, 10]
    full = generate(params, cfg, [prompt], max_new_tokens=12, stop_tokens=[])[0]
    stop = full[3]
    cut = generate(params, cfg, [prompt], max_new_tokens=12, stop_tokens=[stop])[0]
    assert cut == full[:full.index(stop) + 1]
    s1 = generate(params, cfg, [prompt], max_new_tokens=12, temperature=1.0, top_p=0.9, stop_tokens=[], seed=3)
    s2 = generate(params, cfg, [prompt], max_new_tokens=12, temperature=1.0, top_p=0.9, stop_tokens=[], seed=3)
    assert s1 == s2 and all(0 <= t < cfg.vocab_size for t in s1[0])
    # top_p close to 0 keeps only the best token: sampling becomes greedy
    assert generate(params, cfg, [prompt], max_new_tokens=12, temperature=1.0, top_p=1e-6, stop_tokens=[],
                    seed=4)[0] == full


def test_score_matches_transformers(tiny):
    root, d, cfg, params, ref = tiny
    prompts, conts = [[3, 4, 5, 6], [9, 10]], [[11, 12, 13], [14, 15, 16, 17, 18]]
    ours = score(params, cfg, prompts, conts)
    for p, c, lp in zip(prompts, conts, ours):
        logits = torch_logits(ref, np.array([p + c]))[0]
        logp = torch.log_softmax(torch.tensor(logits), -1).numpy()
        want = [logp[len(p) - 1 + j, t] for j, t in enumerate(c)]
        assert np.abs(lp - np.array(want)).max() <= 1e-4


def test_empty_prompt_is_an_error(tiny):
    root, d, cfg, params, ref = tiny
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(params, cfg, [[1, 2], []])
    with pytest.raises(ValueError, match="continuation 0 is empty"):
        score(params, cfg, [[1, 2]], [[]])
