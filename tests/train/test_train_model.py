import pytest

torch = pytest.importorskip("torch")

from bayescale.train.model import (  # noqa: E402
    ModelConfig,
    Transformer,
    flops_per_token,
    non_embedding_params,
)


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(n_layer=1, d_model=16, n_head=1, context=8, vocab_size=300),
        ModelConfig(n_layer=3, d_model=48, n_head=4, d_ff=100, context=32, vocab_size=512),
    ],
)
def test_param_count_matches_hand_count(cfg):
    m = Transformer(cfg)
    d, f, L = cfg.d_model, cfg.d_ff, cfg.n_layer
    # per block: 2 LayerNorms (2d each), qkv 3d^2, out-proj d^2, MLP 2 d f (no biases); + final LN
    hand = L * (2 * d + 3 * d * d + d * d + 2 * d + 2 * d * f) + 2 * d
    assert m.num_params(non_embedding=True) == hand == non_embedding_params(cfg)
    # tied output head: total adds exactly the token and position embeddings
    assert m.num_params(non_embedding=False) == hand + cfg.vocab_size * d + cfg.context * d
    assert m.lm_head.weight is m.wte.weight


def test_flops_per_token():
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=2, context=16, vocab_size=256)
    n = non_embedding_params(cfg)
    f = flops_per_token(cfg)
    assert f["6N"] == 6 * n
    # Kaplan et al. 2020 Table 1: 3 x (2N + 2 n_layer n_ctx d_model + 2 d_model n_vocab)
    assert f["full"] == 3 * (2 * n + 2 * 2 * 16 * 32 + 2 * 32 * 256)


def test_forward_is_causal():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=2, context=16, vocab_size=100)
    m = Transformer(cfg).eval()
    x = torch.randint(0, 100, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 100
    with torch.no_grad():
        la, _ = m(x)
        lb, _ = m(y)
    assert la.shape == (2, 16, 100)
    torch.testing.assert_close(la[:, :10], lb[:, :10])
    assert not torch.allclose(la[:, 10:], lb[:, 10:])


def test_bad_config():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_head=4)
