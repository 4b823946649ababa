"""Row gather / scatter as one Gather: same values as torch's scatter, and no ScatterND in the exported graph."""

import io

import onnx
import pytest
import torch

from segrt.export.model.row_index import gather_rows, overwrite_rows, scatter_rows


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 7, 3, generator=g)
    idx = torch.stack([torch.randperm(7, generator=g)[:4] for _ in range(2)])  # unsorted, distinct per item
    values = torch.randn(2, 4, 3, generator=g)
    return base, idx, values


def test_rows_match_torch_scatter_and_gather(case):
    base, idx, values = case
    full = idx.unsqueeze(-1).expand(-1, -1, 3)
    assert torch.equal(gather_rows(base, idx), torch.gather(base, 1, full))
    assert torch.equal(overwrite_rows(base, idx, values), base.scatter(1, full, values))
    assert torch.equal(scatter_rows(values, idx, 7), torch.zeros_like(base).scatter(1, full, values))


def test_exported_scatter_is_a_row_gather(case):
    base, idx, values = case

    class Overwrite(torch.nn.Module):
        def forward(self, b, i, v):
            return overwrite_rows(b, i, v) + scatter_rows(v, i, b.shape[1])

    buf = io.BytesIO()
    program = torch.onnx.export(Overwrite(), (base, idx, values), dynamo=True, opset_version=17)
    program.model_proto.ir_version = 10
    onnx.save(program.model_proto, buf)
    ops = {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    assert "ScatterND" not in ops and "Gather" in ops
    import onnxruntime as ort

    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), (base, idx, values))})[0]
    torch.testing.assert_close(torch.from_numpy(got), Overwrite()(base, idx, values))
