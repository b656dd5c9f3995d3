"""torch.ops.fastpage.argmax_rows against a plain torch reference of torch.argmax's rules (first index
of the maximum; NaN larger than every number, so a row with NaN gives its first NaN; -0.0 == 0.0):
ties (also across the CUDA kernel's block boundaries), -inf rows, NaN rows, Llama 3's vocabulary at 1
and 416 rows, float32/bfloat16/float16, strided and misaligned rows. Runs on the CPU, and on CUDA where
fastpage was built with its kernels."""

import pytest
import torch

import fastpage  # noqa: F401  (registers torch.ops.fastpage)
from kernel_test_setup import DEVICES, dtype_name, gen  # noqa: F401  (gen: a fixture)

ops = torch.ops.fastpage
LLAMA3_VOCAB = 128256


def ref_argmax(logits):
    """int64 [rows]: the first NaN of a row if it has one, else the first index equal to its maximum."""
    x = logits.cpu().float()
    nan = x.isnan()
    row_max = torch.where(nan, float("-inf"), x).amax(dim=1, keepdim=True)
    best = torch.where(nan.any(dim=1, keepdim=True), nan, x == row_max)
    index = torch.arange(x.shape[1]).expand_as(x)
    return torch.where(best, index, x.shape[1]).amin(dim=1)


def check(logits):
    out = ops.argmax_rows(logits)
    assert out.dtype == torch.int64 and out.device == logits.device and out.shape == (logits.shape[0],)
    assert torch.equal(out.cpu(), ref_argmax(logits))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_name)
@pytest.mark.parametrize("rows,vocab", [(1, LLAMA3_VOCAB), (3, 1000), (5, 50257), (1, 1), (64, 4099)])
def test_random_rows(device, dtype, rows, vocab, gen):
    """Random logits (bfloat16 and float16 hold many exact ties at the top of a 128k row)."""
    check((torch.randn(rows, vocab, generator=gen) * 4).to(device, dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_416_rows_of_llama3_vocab(device, dtype, gen):
    check(torch.randn(416, LLAMA3_VOCAB, generator=gen).to(device, dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_ties_take_the_first_index(device, dtype, gen):
    """The maximum planted at several places of each row, the first one at a random index: near the
    start, in the middle, at the very end, and pairs a few elements or a whole chunk apart."""
    rows, vocab = 9, LLAMA3_VOCAB
    logits = torch.randn(rows, vocab, generator=gen).clamp(-3, 3)
    plants = [[0, 1], [7, 8, vocab - 1], [vocab - 1], [1020, 1021, 2040], [2047, 2048],
              [4095, 4096, 60000], [64127, 64128], [5, 100000, 128000], [vocab - 2, vocab - 1]]
    for row, places in enumerate(plants):
        logits[row, places] = 10.0
    check(logits.to(device, dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_infinities_nan_and_signed_zero(device):
    vocab = 5000
    inf, nan = float("inf"), float("nan")
    logits = torch.full((8, vocab), -inf)  # row 0: all -inf -> index 0
    logits[1, 3000] = 2.0  # a single finite value in a row of -inf
    logits[2, [10, 4000]] = inf  # +inf twice
    logits[3, :] = 1.0  # a constant row -> index 0
    logits[4, [2500, 4999]] = nan  # NaN wins over +inf, the first NaN
    logits[4, 3] = inf
    logits[5, 4321] = -nan  # a NaN with the sign bit set counts as NaN too
    logits[6, [7, 3333]] = torch.tensor([-0.0, 0.0])  # -0.0 == 0.0: the first
    logits[7, [7, 3333]] = torch.tensor([0.0, -0.0])
    expected = [0, 3000, 10, 0, 2500, 4321, 7, 7]
    assert ref_argmax(logits).tolist() == expected
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        out = ops.argmax_rows(logits.to(device, dtype))
        assert out.tolist() == expected, dtype
        assert torch.equal(out.cpu(), torch.argmax(logits.to(dtype), dim=1)), dtype


@pytest.mark.parametrize("device", DEVICES)
def test_strided_and_misaligned_rows(device, gen):
    """Column slices (row stride != vocab; a multiple of 16 bytes or not), rows starting off a 16-byte
    boundary with an aligned stride, and a view starting mid-allocation."""
    wide = torch.randn(6, 7001, generator=gen).to(device)
    check(wide[:, :6999])
    check(wide.view(-1)[3:3 + 5 * 7001].view(5, 7001))
    check(wide.to(torch.bfloat16)[1:, 1:])
    aligned_stride = torch.randn(5, 7004, generator=gen).to(device)
    check(aligned_stride[:, 1:])
    check(aligned_stride[:, :5000])


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_raise(device):
    with pytest.raises(RuntimeError, match="logits"):
        ops.argmax_rows(torch.randn(10, device=device))
    with pytest.raises(RuntimeError, match="logits"):
        ops.argmax_rows(torch.zeros(3, 10, dtype=torch.int32, device=device))
    with pytest.raises(RuntimeError, match="vocab"):
        ops.argmax_rows(torch.zeros(3, 0, device=device))
    assert ops.argmax_rows(torch.zeros(0, 10, device=device)).shape == (0,)


def test_opcheck_schema(gen):
    torch.library.opcheck(ops.argmax_rows.default, (torch.randn(3, 50, generator=gen),),
                          test_utils=("test_schema", "test_autograd_registration"))
