import logging

from support import small_config

from neojax.train.setup import build_model


def test_remat_on_cpu_warns_that_it_saves_no_memory(corpus, tiny_tokenizer, tmp_path, caplog):
    config = small_config(corpus, tiny_tokenizer.source)
    with caplog.at_level(logging.WARNING, logger="neojax.train"):
        build_model(config, str(tmp_path))
    assert not caplog.records
    config.model.remat = "full"
    with caplog.at_level(logging.WARNING, logger="neojax.train"):
        model_config, _, _ = build_model(config, str(tmp_path))
    assert model_config.remat == "full" and "does not lower memory on CPUs" in caplog.text
