"""The classification head against transformers' GPTNeoForSequenceClassification."""
import jax
import numpy as np
import pytest

from neojax.checkpoint.hf import load_hf_classifier, save_hf_classifier
from neojax.model.classifier import GPTNeoClassifier, init_classifier

KW = dict(vocab_size=60, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
          window_size=4, max_position_embeddings=40)


def random_hf_classifier(num_labels=3, pad_token_id=0):
    import torch
    import transformers
    config = transformers.GPTNeoConfig(bos_token_id=1, eos_token_id=1, pad_token_id=pad_token_id, num_labels=num_labels,
                                       **KW)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.GPTNeoForSequenceClassification(config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0)
                    + 0.2 * torch.randn(p.shape, generator=gen))
    return model


def hf_logits(model, tokens, mask, positions=None):
    import torch
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(tokens), attention_mask=torch.as_tensor(mask),
                     position_ids=None if positions is None else torch.as_tensor(positions)).logits.numpy()


def padded(lengths, total=12, left=False, seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), total), np.int64)  # 0 = the pad id
    mask = np.zeros_like(tokens)
    for row, n in enumerate(lengths):
        cols = slice(total - n, total) if left else slice(0, n)
        tokens[row, cols] = rng.integers(2, KW["vocab_size"], size=n)
        mask[row, cols] = 1
    return tokens, mask


@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory):
    model = random_hf_classifier()
    directory = str(tmp_path_factory.mktemp("hf_cls"))
    model.save_pretrained(directory)
    return model, directory


def test_logits_match_transformers_with_right_and_left_padding(hf_classifier):
    model, directory = hf_classifier
    config, params, _, labels = load_hf_classifier(directory)
    assert labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    apply = jax.jit(GPTNeoClassifier(config, 3).apply)
    tokens, mask = padded([12, 7, 3, 1])
    ours = np.asarray(apply({"params": params}, tokens, attention_mask=mask))
    np.testing.assert_allclose(ours, hf_logits(model, tokens, mask), atol=2e-5)
    # Left padding: transformers counts positions from the first column, so pass them to both.
    tokens, mask = padded([12, 7, 3], left=True)
    positions = np.broadcast_to(np.arange(12), tokens.shape)
    ours = np.asarray(apply({"params": params}, tokens, attention_mask=mask, position_ids=positions))
    np.testing.assert_allclose(ours, hf_logits(model, tokens, mask, positions), atol=2e-5)


@pytest.mark.slow
def test_export_is_loadable_by_transformers(hf_classifier, tmp_path):
    import transformers
    model, directory = hf_classifier
    config, params, _, _ = load_hf_classifier(directory)
    fresh = init_classifier(config, 3, jax.random.key(1), transformer_params=params["transformer"])
    save_hf_classifier(str(tmp_path / "out"), fresh, config, ["neg", "neutral", "pos"], pad_token_id=0)
    back = transformers.GPTNeoForSequenceClassification.from_pretrained(str(tmp_path / "out")).eval()
    assert back.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    tokens, mask = padded([9, 4])
    ours = np.asarray(GPTNeoClassifier(config, 3).apply({"params": fresh}, tokens, attention_mask=mask))
    np.testing.assert_allclose(ours, hf_logits(back, tokens, mask), atol=2e-5)


def test_a_causal_lm_directory_is_not_a_classifier(hf_dirs):
    directory = hf_dirs["mixed_pattern"][0]
    with pytest.raises(ValueError, match="no score.weight.*init_classifier"):
        load_hf_classifier(directory)
