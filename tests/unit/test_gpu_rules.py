"""The rules under a GPU box's generators, pure: which GPUs a container sees (`--gpus`), what counts as
running out of GPU memory, which texts go together in a batch (the runs are in tests/system/test_gpu.py)."""

from __future__ import annotations

import collections

import pytest

from pipeline.batches import next_batch
from pipeline.gpus import NoGpus, discover, resolve
from pipeline.synth import OutOfMemory, is_out_of_memory


def test_discover_follows_the_container_runtime() -> None:
    assert discover({"CUDA_VISIBLE_DEVICES": "2,3", "NVIDIA_VISIBLE_DEVICES": "all"}) == (["2", "3"],
                                                                                         "CUDA_VISIBLE_DEVICES")
    assert discover({"NVIDIA_VISIBLE_DEVICES": "GPU-aa,GPU-bb", "PATH": ""})[0] == ["GPU-aa", "GPU-bb"]
    # a container given the host's GPUs 2 and 3: CUDA inside it calls them 0 and 1
    assert discover({"NVIDIA_VISIBLE_DEVICES": "2,3", "PATH": ""}) == (["0", "1"], "NVIDIA_VISIBLE_DEVICES")
    for none in ("none", "void", ""):
        assert discover({"NVIDIA_VISIBLE_DEVICES": none, "PATH": ""})[0] == []
    assert discover({"NVIDIA_VISIBLE_DEVICES": "all", "PATH": ""}) == ([], "nvidia-smi -L")
    assert resolve("1, GPU-x") == ["1", "GPU-x"]
    for bad in ("0,,1", "0,0", "0;rm"):
        with pytest.raises(NoGpus):
            resolve(bad)


def test_is_out_of_memory() -> None:
    class OutOfMemoryError(RuntimeError):
        pass
    OutOfMemoryError.__module__ = "torch.cuda"
    assert is_out_of_memory(OutOfMemoryError("CUDA error"))
    assert is_out_of_memory(OutOfMemory("plugin"))
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory"))
    try:
        try:
            raise RuntimeError("CUDA error: OUT OF MEMORY")
        except RuntimeError as inner:
            raise ValueError("the model failed") from inner
    except ValueError as outer:
        assert is_out_of_memory(outer)
    assert not is_out_of_memory(MemoryError("out of memory"))  # the host's, not a GPU's
    assert not is_out_of_memory(RuntimeError("model cannot say it"))


def test_next_batch_groups_by_length_and_always_takes_the_oldest() -> None:
    q = collections.deque({"text": "x" * n, "token": str(i)} for i, n in enumerate([50, 5, 48, 6, 47, 5, 49, 7]))
    first = next_batch(q, 4, by_length=True)
    assert [len(e["text"]) for e in first] == [50, 48, 47, 49]
    assert [len(e["text"]) for e in next_batch(q, 4, by_length=True)] == [5, 6, 5, 7]
    q = collections.deque([{"text": "a", "token": "1"}, {"text": "b", "token": "2", "suspect": True}])
    assert [e["token"] for e in next_batch(q, 4, by_length=True)] == ["1"]  # a suspect is never a batch-mate
    assert [e["token"] for e in next_batch(q, 4, by_length=True)] == ["2"]
