"""Exports the trained HEMA3N-Core network as TorchScript for the optional libtorch backend.

The PyTorch module is the reference definition of the network (the same layers as model.py);
its weights are read from the committed FP32 ONNX file, so the parity check compares ONNX
Runtime's execution of the export with libtorch's execution of the reference network.

    python export_torchscript.py OUT.pt
"""
import os
import sys

import onnx
import torch
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


class HemaCore(torch.nn.Module):
    def __init__(self, weights):
        super().__init__()
        for name, w in weights.items():
            self.register_buffer(name.replace(".", "_"), torch.from_numpy(w.copy()))

    def lin(self, x, w, b):
        return x @ w + b

    def forward(self, vitals, text):
        h1 = torch.relu(self.lin(vitals, self.v1_w, self.v1_b))
        h2 = torch.relu(self.lin(h1, self.v2_w, self.v2_b))
        e = text @ self.emb_w
        h3 = torch.relu(self.lin(e, self.t1_w, self.t1_b))
        h4 = torch.relu(self.lin(torch.cat([h2, h3], dim=1), self.f1_w, self.f1_b))
        return (self.lin(h4, self.esi_w, self.esi_b), self.lin(h4, self.spec_w, self.spec_b),
                torch.sigmoid(self.lin(h4, self.conf_w, self.conf_b)))


def main():
    model = onnx.load(os.path.join(HERE, "hema3n-core.fp32.onnx"))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    net = HemaCore(weights).eval()
    scripted = torch.jit.script(net)
    scripted.save(sys.argv[1])
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
