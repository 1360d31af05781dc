"""Test set-up shared by the whole suite.

Without a GPU, Triton kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` must be set
before triton is first imported, so it is set here, before anything imports vqvae_fast.kernels.
On a machine with CUDA the same tests run the real compiler on CUDA tensors instead.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each test that takes ``device`` runs once per device; CUDA ones skip without a GPU."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=DEVICES)
def triton_device(request):
    """A device on which the ``triton`` backend is forced for the test's duration.

    On CPU the kernels run in Triton's interpreter; on CUDA they are compiled for the GPU.
    """
    import vqvae_fast
    from vqvae_fast import _backend

    reason = _backend.triton_status()
    if reason is not None:
        pytest.skip(reason)
    if request.param == "cpu" and not _backend.triton_interpreting():
        pytest.skip("Triton runs on CPU tensors only in its interpreter (TRITON_INTERPRET=1)")
    with vqvae_fast.use_backend("triton"):
        yield request.param
