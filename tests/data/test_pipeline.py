"""Sources, token cache, packing, validation split, resumable batches and bad inputs."""
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from neojax.data import sources
from neojax.data.pipeline import TrainBatches, build_token_cache, token_dtype, valid_batches

DOCS = [f"document number {i}: " + " ".join(f"w{(i * 7 + j) % 50}" for j in range(5 + i % 9)) for i in range(60)]


def _split_docs(stream, tokenizer):
    text = tokenizer.decode(stream)
    return [d for d in text.split("<|endoftext|>") if d]


@pytest.fixture()
def jsonl_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d, "meta": {"pile_set_name": "A" if i % 3 else "B"}}) + "\n"
                            for i, d in enumerate(DOCS)))
    return str(path)


def test_text_file_sources(tmp_path):
    (tmp_path / "a.txt").write_text("para one\nstill one\n\npara two\n\n\n  \npara three")
    (tmp_path / "b.txt").write_text("second file")
    pattern = str(tmp_path / "*.txt")
    assert list(sources.text_files(pattern)) == ["para one\nstill one\n\npara two\n\n\n  \npara three", "second file"]
    assert list(sources.text_files(pattern, split="blank_line")) == ["para one\nstill one", "para two", "para three",
                                                                    "second file"]
    with pytest.raises(sources.DataError, match="matches no files"):
        list(sources.text_files(str(tmp_path / "*.md")))
    (tmp_path / "c.txt").write_bytes(b"ok \xff\xfe bad")
    with pytest.raises(sources.DataError, match=r"c.txt is not valid UTF-8 at byte 3.*on_error='skip'"):
        list(sources.text_files(pattern))
    policy = sources.ErrorPolicy("skip")
    assert len(list(sources.text_files(pattern, errors=policy))) == 2 and policy.skipped == 1


def test_jsonl_plain_zst_meta_filter_and_corruption(jsonl_file, tmp_path):
    import zstandard
    assert list(sources.jsonl(jsonl_file)) == DOCS
    zst = tmp_path / "00.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(open(jsonl_file, "rb").read()))
    assert list(sources.jsonl(str(zst))) == DOCS
    assert list(sources.jsonl(str(zst), meta_filter={"pile_set_name": ["B"]})) == DOCS[::3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n{"body": "no text"}\n{"text": "also fine"}\n')
    with pytest.raises(sources.DataError, match=r"bad.jsonl:2: not a valid UTF-8 JSON line"):
        list(sources.jsonl(str(bad)))
    policy = sources.ErrorPolicy("skip")
    assert list(sources.jsonl(str(bad), errors=policy)) == ["fine", "also fine"] and policy.skipped == 2
    (tmp_path / "corrupt.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd garbage")
    with pytest.raises(sources.DataError, match="not a valid zstandard file"):
        list(sources.jsonl(str(tmp_path / "corrupt.jsonl.zst")))


def test_tfds_source_without_download():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=7):
        docs = list(sources.tfds_source("lm1b", split="train", feature="text"))
        assert len(docs) == 7 and all(isinstance(d, str) for d in docs)
        with pytest.raises(sources.DataError, match=r"no feature\(s\) \['body'\]"):
            list(sources.tfds_source("lm1b", split="train", feature="body"))


def test_stdlib_corpus_is_offline_and_bounded():
    docs = list(sources.stdlib(max_bytes=200_000))
    assert 200_000 <= sum(map(len, docs)) < 200_000 + max(map(len, docs)) + 1
    assert any("def " in d for d in docs)


def test_packing_covers_every_token_once_and_validation_is_disjoint(jsonl_file, tiny_tokenizer, tmp_path):
    cache = build_token_cache("jsonl", {"paths": jsonl_file}, tiny_tokenizer, str(tmp_path / "cache"),
                              valid_fraction=0.1, seed=3, progress=False)
    train_docs = _split_docs(np.asarray(cache.train), tiny_tokenizer)
    valid_docs = _split_docs(np.asarray(cache.valid), tiny_tokenizer)
    assert sorted(train_docs + valid_docs) == sorted(DOCS)  # every document in exactly one split
    assert not set(train_docs) & set(valid_docs) and len(valid_docs) == 6
    assert cache.train.dtype == np.uint16 and cache.meta["documents"] == 60
    seq = 15
    batches = TrainBatches([cache], seq, 1, seed=0)
    n = batches.windows_per_epoch
    assert n == len(cache.train) // (seq + 1)
    epoch = [next(batches)[0] for _ in range(n)]
    expected = cache.train[: n * (seq + 1)].reshape(n, seq + 1)
    assert sorted(map(tuple, epoch)) == sorted(map(tuple, expected.astype(np.int32)))  # none lost or repeated
    assert [tuple(w) for w in epoch] != [tuple(w) for w in expected]  # really shuffled
    second = [next(batches)[0] for _ in range(n)]
    assert sorted(map(tuple, second)) == sorted(map(tuple,
                                                    epoch)) and [tuple(w) for w in second] != [tuple(w) for w in epoch]
    v = valid_batches([cache], seq, 2)
    assert all(b.shape == (2, seq + 1) for b in v)


def test_resume_is_bitwise_and_processes_split_the_global_batch(jsonl_file, tiny_tokenizer, tmp_path):
    cache = build_token_cache("jsonl", {"paths": jsonl_file}, tiny_tokenizer, str(tmp_path), progress=False)
    run = TrainBatches([cache], 7, 4, seed=11)
    for _ in range(5):
        next(run)
    state = json.loads(json.dumps(run.get_state()))  # small and serialisable
    expected = [next(run) for _ in range(6)]
    resumed = TrainBatches([cache], 7, 4, seed=11)
    resumed.set_state(state)
    assert all(np.array_equal(a, next(resumed)) for a in expected)
    fresh = TrainBatches([cache], 7, 4, seed=11)
    head = [next(fresh) for _ in range(11)]
    assert all(np.array_equal(a, b) for a, b in zip(head[5:], expected))  # same seed, same stream
    parts = [TrainBatches([cache], 7, 4, seed=11, process_index=i, process_count=2) for i in range(2)]
    for g in head[:3]:
        local = [next(p) for p in parts]
        assert local[0].shape == (2, 8)
        np.testing.assert_array_equal(np.concatenate(local), g)  # each process: its contiguous rows, in order


def test_mixture_follows_weights(jsonl_file, tiny_tokenizer, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(f"another text {i} " * 4 for i in range(40)))
    a = build_token_cache("jsonl", {"paths": jsonl_file}, tiny_tokenizer, str(tmp_path), progress=False)
    b = build_token_cache("text_files", {"paths": str(other), "split": "blank_line"}, tiny_tokenizer, str(tmp_path),
                          progress=False)
    from_b = {tuple(b.train[i * 8:(i + 1) * 8]) for i in range(len(b.train) // 8)}
    mixed = TrainBatches([a, b], 7, 100, seed=0, weights=[0.75, 0.25])
    rows = np.concatenate([next(mixed) for _ in range(4)])
    share = np.mean([tuple(r) in from_b for r in rows])
    assert abs(share - 0.25) < 0.03


def test_second_build_reuses_the_cache(jsonl_file, tiny_tokenizer, tmp_path, monkeypatch):
    first = build_token_cache("jsonl", {"paths": jsonl_file}, tiny_tokenizer, str(tmp_path), progress=False)
    monkeypatch.setattr(tiny_tokenizer, "encode_batch", lambda *_: pytest.fail("re-tokenised"))
    second = build_token_cache("jsonl", {"paths": jsonl_file}, tiny_tokenizer, str(tmp_path), progress=False)
    assert second.directory == first.directory and np.array_equal(first.train, second.train)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_bad_inputs(tmp_path, tiny_tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(sources.DataError, match="produced no documents"):
        build_token_cache("jsonl", {"paths": str(empty)}, tiny_tokenizer, str(tmp_path), progress=False)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # a failed build leaves nothing behind
    with pytest.raises(sources.DataError, match="matches no files"):
        build_token_cache("jsonl", {"paths": str(tmp_path / "nope*.jsonl")}, tiny_tokenizer, str(tmp_path))
    with pytest.raises(ValueError, match="does not fit uint16; use uint32"):
        token_dtype(70_000, "uint16")
    assert token_dtype(70_000) == np.uint32 and token_dtype(50257) == np.uint16
    with pytest.raises(KeyError, match="unknown data_source 'pile'.*jsonl"):
        sources.documents("pile", {})
    with pytest.raises(ValueError, match="bad source_args"):
        sources.documents("jsonl", {"path": "x"})


def _build_in(process_index, process_count, docs_file, tokenizer_dir, cache_dir):
    code = ("import sys; from neojax.data.tokenizer import Tokenizer; from neojax.data.pipeline import "
            "build_token_cache; build_token_cache('jsonl', {'paths': sys.argv[1]}, Tokenizer.from_path(sys.argv[2]), "
            f"sys.argv[3], progress=False, process_index={process_index}, process_count={process_count}, "
            "shard_docs=7)")
    return subprocess.Popen([sys.executable, "-c", code, docs_file, tokenizer_dir, cache_dir])


@pytest.mark.slow
def test_processes_build_shares_of_the_cache_that_equal_one_process(jsonl_file, tiny_tokenizer, tmp_path):
    one = build_token_cache("jsonl", {"paths": jsonl_file}, tiny_tokenizer, str(tmp_path / "one"), progress=False,
                            shard_docs=7)
    procs = [_build_in(i, 2, jsonl_file, tiny_tokenizer.source, str(tmp_path / "two")) for i in range(2)]
    try:
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            p.kill()
    two = build_token_cache("jsonl", {"paths": jsonl_file}, tiny_tokenizer, str(tmp_path / "two"), progress=False,
                            shard_docs=7)
    assert len(one.meta["shards"]) == 9 and one.meta == two.meta
    np.testing.assert_array_equal(np.asarray(one.train), np.asarray(two.train))
    np.testing.assert_array_equal(np.asarray(one.valid), np.asarray(two.valid))


@pytest.mark.slow
def test_a_killed_build_resumes_shard_by_shard(jsonl_file, tiny_tokenizer, tmp_path):
    half = _build_in(1, 2, jsonl_file, tiny_tokenizer.source, str(tmp_path))  # only odd shards, then waits
    directory, deadline = None, time.time() + 120
    try:
        while directory is None or len(glob.glob(os.path.join(directory, "shard-*.json"))) < 4:
            assert time.time() < deadline and half.poll() is None, "process 1 never finished its shards"
            found = glob.glob(str(tmp_path / "jsonl-*"))
            directory = found[0] if found else None
            time.sleep(0.1)
    finally:
        half.kill()  # killed while waiting for process 0's shards
    done_before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(directory, "shard-*.json"))}
    cache = build_token_cache("jsonl", {"paths": jsonl_file}, tiny_tokenizer, str(tmp_path), progress=False,
                              shard_docs=7)
    assert all(os.path.getmtime(p) == t for p, t in done_before.items())  # finished shards not redone
    fresh = build_token_cache("jsonl", {"paths": jsonl_file}, tiny_tokenizer, str(tmp_path / "fresh"),
                              progress=False, shard_docs=7)
    np.testing.assert_array_equal(np.asarray(cache.train), np.asarray(fresh.train))
