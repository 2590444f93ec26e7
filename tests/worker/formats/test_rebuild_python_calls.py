"""The rebuilt graph calls the ops between its layers as Tensor methods and torch functions, as an
eager model does, not as aten overloads (slower to call from Python), with the same results."""

from __future__ import annotations

import torch
from torch import nn

from kompression.worker.formats.graph_rebuild import op_name, rebuild


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1) * 0.5
        y = torch.where(y > 0, y, y * 0.1)  # where's schema starts with its condition, not `self`
        return x + y.permute(0, 3, 1, 2).reshape(x.shape[0], 4, -1).view_as(x)


def test_ops_between_layers_become_methods_and_torch_functions_and_compute_the_same() -> None:
    torch.manual_seed(0)
    program = torch.export.export(
        _Block().eval(), (torch.randn(2, 4, 6, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )

    gm = rebuild(program)

    calls = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    assert not [n.target for n in calls if isinstance(n.target, torch._ops.OpOverload)]
    where = next(n for n in calls if op_name(n) == "where")
    assert where.op == "call_function" and where.target is torch.where
    assert {"permute", "mul", "gt", "add", "size"} <= {str(n.target) for n in calls if n.op == "call_method"}
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, 4, 6, 6)
            torch.testing.assert_close(gm(x), program.module()(x), rtol=0, atol=0)
