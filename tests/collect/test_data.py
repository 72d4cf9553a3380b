from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dpprof.collect.data import build_datasets, build_loaders, synthetic_tensors
from dpprof.collect.models import build_model
from dpprof.collect.strategies import wrap_single
from dpprof.collect.train import LoopSetup, StopRequest, train_loop
from dpprof.errors import DpprofError


def test_synthetic_is_deterministic_per_seed_and_split():
    x1, y1 = synthetic_tensors(64, seed=3, split="train")
    x2, y2 = synthetic_tensors(64, seed=3, split="train")
    x3, _ = synthetic_tensors(64, seed=4, split="train")
    xt, _ = synthetic_tensors(64, seed=3, split="test")
    assert x1.shape == (64, 3, 32, 32) and x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3) and not torch.equal(x1, xt)
    assert set(y1.tolist()) <= set(range(10))


def test_default_synthetic_sizes():
    train, test, info = build_datasets("synthetic")
    assert (len(train), len(test)) == (2048, 512)
    assert info == {"kind": "synthetic", "train_size": 2048, "test_size": 512, "root": None}


@pytest.mark.slow
def test_tiny_model_learns_synthetic_data_above_chance():
    torch.manual_seed(0)
    loaders = build_loaders("synthetic", root=None, download=False, train_size=512, test_size=256, seed=0,
                            batch_size=32, workers=0, pin_memory=False)
    model = build_model("tiny")
    cpu = torch.device("cpu")
    placement = wrap_single(model, cpu)
    setup = LoopSetup(rank=0, world_size=1, global_batch=32, steps=None, epochs=4, lr=0.05, momentum=0.9,
                      loss_every=0, exact_timing=False)
    epochs: list[dict] = []
    train_loop(setup, placement.module, model, loaders, cpu, cpu, None, StopRequest(), lambda r: None,
               epochs.append)
    assert len(epochs) == 4
    # chance is 0.10; a learnable set lets even a 1.6k-parameter model well past it in 4 short epochs
    assert epochs[-1]["test_acc"] > 0.3, epochs
    assert epochs[-1]["train_acc"] > epochs[0]["train_acc"]


def _write_tiny_cifar(root: Path, n_train: int = 20, n_test: int = 10) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}

    for i in range(1, 6):
        with open(base / f"data_batch_{i}", "wb") as fh:
            pickle.dump(batch(n_train // 5), fh)
    with open(base / "test_batch", "wb") as fh:
        pickle.dump(batch(n_test), fh)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)


def test_real_cifar10_loader_on_a_tiny_cifar_format_dataset(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    _write_tiny_cifar(tmp_path)
    # torchvision checks the md5 of the real files; these are not them.
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    loaders = build_loaders("cifar10", root=str(tmp_path), download=False, train_size=None, test_size=None,
                            seed=0, batch_size=4, workers=0, pin_memory=False)
    assert loaders.info == {"kind": "cifar10", "train_size": 20, "test_size": 10, "root": str(tmp_path)}
    x, y = next(iter(loaders.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    # normalised with CIFAR statistics: uint8 noise maps to roughly zero-mean values beyond [0, 1]
    assert x.min() < 0 and x.max() > 1
    xt, yt = next(iter(loaders.test))
    assert yt.tolist() == [0, 1, 2, 3]
    sub = build_loaders("cifar10", root=str(tmp_path), download=False, train_size=8, test_size=4,
                        seed=0, batch_size=4, workers=0, pin_memory=False)
    assert sub.info["train_size"] == 8 and sub.info["test_size"] == 4


def test_missing_cifar10_is_a_one_line_error(tmp_path):
    with pytest.raises(DpprofError, match="--download"):
        build_datasets("cifar10", root=str(tmp_path))


def test_distributed_shards_split_the_data():
    a = build_loaders("synthetic", root=None, download=False, train_size=64, test_size=16, seed=0,
                      batch_size=8, workers=0, pin_memory=False, rank=0, world_size=2)
    b = build_loaders("synthetic", root=None, download=False, train_size=64, test_size=16, seed=0,
                      batch_size=8, workers=0, pin_memory=False, rank=1, world_size=2)
    assert len(a.train) == len(b.train) == 4
    xa, _ = next(iter(a.train))
    xb, _ = next(iter(b.train))
    assert not torch.equal(xa, xb)


def test_training_set_smaller_than_a_global_batch_is_refused():
    with pytest.raises(DpprofError, match="smaller than one global batch"):
        build_loaders("synthetic", root=None, download=False, train_size=16, test_size=16, seed=0,
                      batch_size=16, workers=0, pin_memory=False, world_size=2)
