"""Export of the embedding path to a graph of standard torch ops (no pydcr extension needed to run it)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import reference
from .dcr import DCR


def reference_decompositions() -> dict:
    """Each pydcr op mapped to its pure-PyTorch twin, for ExportedProgram.run_decompositions."""
    table: dict = {}
    for name, twin in reference.TWINS.items():
        op = getattr(torch.ops.pydcr, name, None)
        if op is not None:
            table[op.default] = twin
    return table


class _Embedding(nn.Module):
    def __init__(self, model: DCR, embed: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model = model  # registered, so its weights export as parameters, not constants
        self.embed = embed

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)


def export_embedding(
    model: DCR,
    kind: str = "hr",
    resolution: int | None = None,
    example: torch.Tensor | None = None,
    *,
    flip: bool = False,
    dynamic_batch: bool = True,
) -> torch.export.ExportedProgram:
    """torch.export one embedding path of `model`, with pydcr's ops decomposed into standard ops.

    kind: "hr" (gallery, through `resolution`'s HR branch), "lr" (probes of `example`'s size
    through the LR branch of the trained resolution nearest `resolution` or that size) or "trunk".
    example: a batch of the images the exported graph will take (default: two 112 x 96 uint8 faces,
    or resolution x resolution crops for "lr"). The batch dimension is dynamic unless
    dynamic_batch is False. Run it with ``exported.module()(images)``.
    """
    h, w = model.trunk.input_size
    if kind == "hr":
        embed = lambda x: model.embed_hr(x, resolution, flip=flip)  # noqa: E731
    elif kind == "lr":
        if example is None and resolution is None:
            raise ValueError("export of the LR path needs a resolution or an example probe batch")
        if resolution is None and tuple(example.shape[-2:]) == (h, w):
            # Full-size probes would be routed by estimate_resolution, which depends on the pixels.
            raise ValueError(f"an LR export of full-size {h} x {w} probes needs `resolution` "
                             "(the probes' resolution k); or give native low-resolution crops as the example")
        embed = lambda x: model.embed_lr(x, size=resolution, flip=flip)  # noqa: E731
        if example is None:
            h = w = resolution
    elif kind == "trunk":
        embed = lambda x: model.embed_trunk(x, flip=flip)  # noqa: E731
    else:
        raise ValueError(f"kind must be 'hr', 'lr' or 'trunk', got {kind!r}")
    if example is None:
        example = torch.zeros(2, 3, h, w, dtype=torch.uint8, device=next(model.parameters()).device)
    if dynamic_batch and example.shape[0] < 2:
        # torch.export specializes a batch of 0 or 1 to a constant: trace a batch of two of the same size.
        first = example[:1] if len(example) else example.new_zeros((1, *example.shape[1:]))
        example = torch.cat([first, first])
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    training = model.training
    model.eval()  # exported in inference mode; the caller's model goes back to its mode after
    try:
        exported = torch.export.export(_Embedding(model, embed), (example,), dynamic_shapes=shapes)
    finally:
        model.train(training)
    return exported.run_decompositions(reference_decompositions())


def export_onnx(path, model: DCR, kind: str = "hr", resolution: int | None = None,
                example: torch.Tensor | None = None, *, flip: bool = False) -> None:
    """Export an embedding path (arguments as export_embedding) as an ONNX model at `path`.

    Needs the optional packages onnx and onnxscript (``pip install "pydcr[export]"``); the
    resampling becomes ONNX Resize (cubic, antialiased where the model's convention is).
    """
    exported = export_embedding(model, kind, resolution, example, flip=flip)
    args, _ = exported.example_inputs
    torch.onnx.export(exported, args, dynamo=True).save(str(path))
