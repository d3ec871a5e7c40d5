"""Distillation: the KL term against a float64 definition, and a tiny student whose loss and KL
to the teacher fall."""
import jax
import numpy as np
import pytest

from neojax.model import GPTNeo, GPTNeoConfig, init_params
from neojax.train.metrics import read_metrics
from neojax.train.objectives import distill_loss
from neojax.train.step import logits, predict

STUDENT = GPTNeoConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, attention_types=[[["local"], 1]],
                       window_size=4, max_position_embeddings=16)
TEACHER = STUDENT.replace(hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                          initializer_range=0.3)


@pytest.mark.slow
@pytest.mark.parametrize("alpha,temperature", [(1.0, 2.0), (0.3, 1.0)])
def test_kl_term_matches_float64_definition(alpha, temperature):
    s, t = init_params(STUDENT, jax.random.key(0)), init_params(TEACHER, jax.random.key(1))
    tokens = np.random.default_rng(0).integers(0, 40, size=(2, 12))
    pred = predict(s, STUDENT, tokens)
    loss, aux = distill_loss(pred, logits(t, TEACHER, pred.inputs), temperature, alpha)
    logsoftmax = lambda x: x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1,
                                                                                                          keepdims=True))
    ls = np.asarray(GPTNeo(STUDENT).apply({"params": s}, tokens[:, :-1]), np.float64)
    lt = np.asarray(GPTNeo(TEACHER).apply({"params": t}, tokens[:, :-1]), np.float64)
    pt, qs = logsoftmax(lt / temperature), logsoftmax(ls / temperature)
    kl = (np.exp(pt) * (pt - qs)).sum(-1).mean()
    nll = -np.take_along_axis(logsoftmax(ls), tokens[:, 1:, None], -1).mean()
    np.testing.assert_allclose(float(aux["kl"]), kl, rtol=1e-4)
    np.testing.assert_allclose(float(loss), (1 - alpha) * nll + alpha * temperature ** 2 * kl, rtol=1e-4)


@pytest.mark.slow
def test_student_loss_and_kl_to_teacher_fall(tiny_hf_with_tokenizer, tmp_path):
    from neojax.train.config import base_config
    from neojax.train.loop import train
    c = base_config()
    c.model.preset = "tiny"
    c.model.overrides = dict(hidden_size=32, num_layers=2, num_heads=4, window_size=16, max_position_embeddings=128)
    c.objective = "distill"
    c.distill.update(teacher=tiny_hf_with_tokenizer, temperature=2.0, alpha=0.9)
    c.data.tokenizer = tiny_hf_with_tokenizer
    c.data.source_args = dict(max_bytes=200_000)
    c.data.seq_len = 32
    c.optimizer.update(lr=3e-3, warmup_steps=2)
    c.train.update(total_steps=30, global_batch=8, log_every=3, report_mfu=False)
    c.checkpoint.every_steps = 30
    c.eval.update(every_steps=30, valid_batches=2)
    train(c, str(tmp_path / "run"))
    rows = [r for r in read_metrics(str(tmp_path / "run")) if "train/kl" in r]
    kl, loss = [r["train/kl"] for r in rows], [r["train/loss"] for r in rows]
    print("kl", [round(x, 3) for x in kl], "loss", [round(x, 3) for x in loss])
    assert len(rows) == 10 and kl[-1] < 0.8 * kl[0] and loss[-1] < loss[0]
