"""The T5 text encoder SD3 and Flux read prompts with: the shipped tokenizer, loading from a state dict in
transformers' layout (configuration read off the shapes), and ComfyUI's weighting against the empty prompt."""

import pytest
import torch

from flowrun.diffusion import t5


@pytest.fixture(scope="module")
def toy():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    return T5EncoderModel(config).eval()


def test_tokenizer_is_shipped_and_pads_after_the_end_token():
    tokens = t5.tokenize("a photo of a cat", 77)
    assert [t for t, _ in tokens[:8]] == [3, 9, 1202, 13, 3, 9, 1712, 1]  # T5 v1.1's ids, end token 1
    assert len(tokens) == 77 and {t for t, _ in tokens[8:]} == {0}
    assert len(t5.tokenize("word " * 300, 77)) == 301  # never cut: longer prompts are longer


def test_weights_follow_the_emphasis_syntax():
    tokens = t5.tokenize("a (photo:1.3) of ((cat))", 16)
    weights = {t: w for t, w in tokens}
    assert weights[1202] == 1.3 and weights[1712] == pytest.approx(1.21) and weights[13] == 1.0


def test_configuration_is_read_off_the_shapes(toy):
    config = t5.config_from_state(toy.state_dict())
    assert (config["d_model"], config["d_kv"], config["d_ff"], config["num_layers"], config["num_heads"]) == \
        (32, 8, 64, 2, 4)
    assert config["feed_forward_proj"] == "gated-gelu"
    assert t5.is_t5(toy.state_dict())
    assert not t5.is_t5({"text_model.embeddings.token_embedding.weight": torch.zeros(1)})


def test_loaded_encoder_equals_transformers_and_weights_move_from_the_empty_prompt(toy):
    model = t5.build(toy.state_dict())
    assert model.encoder.embed_tokens is model.shared  # one table, not two copies
    tokens = t5.tokenize("a (photo:1.3) of a cat", 77)
    z = t5.encode(model, tokens)
    with torch.no_grad():
        plain = toy(input_ids=torch.tensor([[t for t, _ in tokens]])).last_hidden_state
        empty = toy(input_ids=torch.tensor([[1] + [0] * 76])).last_hidden_state
    assert z.shape == (1, 77, 32)
    unweighted = [j for j, (_, w) in enumerate(tokens) if w == 1.0]
    assert torch.equal(z[0, unweighted], plain[0, unweighted])
    assert torch.allclose(z[0, 2], (plain[0, 2] - empty[0, 2]) * 1.3 + empty[0, 2], atol=1e-6)
    assert not torch.allclose(z[0, 2], plain[0, 2])


def test_full_size_t5_xxl_layout_on_the_meta_device():
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        full = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                       num_heads=64, feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    model = t5.build(full.state_dict())
    assert sum(p.numel() for p in model.parameters()) == 4_762_310_656  # T5-XXL's encoder, as published (4.76 B)
