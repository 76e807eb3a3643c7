"""The paper's model visualisations as PNG files (matplotlib, headless).

- ``plot_vertices`` (Fig. 8): the pixels selected as graph vertices, coloured by class, over the image.
- ``plot_adjacency`` (Fig. 7): the learned adjacency A as a heat map with class-labelled vertices.
- ``plot_projection`` (Fig. 11): per-class response maps of the reprojection matrix P.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from agrnet.data.classes import LabelSpec  # noqa: E402
from agrnet.data.transforms import Canvas, to_tensor, warp_pair  # noqa: E402
from agrnet.modeling.agrnet import AGRNet, AGRNetOutput  # noqa: E402
from agrnet.modeling.graph import AdaptiveProjection  # noqa: E402
from agrnet.outputs import prepare_out_dir  # noqa: E402


def _require_adaptive(model: AGRNet) -> AdaptiveProjection:
    if not isinstance(model.projection, AdaptiveProjection):
        raise ValueError("this visualisation needs the adaptive graph projection (the full AGRNet)")
    return model.projection


@torch.no_grad()
def run_on_image(model: AGRNet, image: np.ndarray, size: Canvas) -> tuple[np.ndarray, AGRNetOutput]:
    """Letterbox an (H, W, 3) RGB image and run the model; returns the canvas and the output (batch 1)."""
    canvas, _ = warp_pair(image, None, size)
    return canvas, model.eval()(to_tensor(canvas)[None])


def _vertex_xy(indices: np.ndarray, grid: tuple[int, int], canvas: tuple[int, int]) -> np.ndarray:
    """Flat indices into the (h1, w1) feature grid -> (x, y) pixel centres on the (height, width) canvas."""
    h1, w1 = grid
    ys, xs = np.divmod(indices, w1)
    return np.stack([(xs + 0.5) * canvas[1] / w1, (ys + 0.5) * canvas[0] / h1], axis=1)


def plot_vertices(canvas: np.ndarray, output: AGRNetOutput, spec: LabelSpec, k: int, path: Path) -> Path:
    assert output.vertex_indices is not None and output.raw_logits is not None
    h1, w1 = output.raw_logits.shape[-2:]
    xy = _vertex_xy(output.vertex_indices[0].cpu().numpy(), (h1, w1), canvas.shape[:2])
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(canvas)
    for cls, name in enumerate(spec.class_names):
        pts = xy[cls * k : (cls + 1) * k]
        ax.scatter(pts[:, 0], pts[:, 1], s=60, color=spec.palette[cls] / 255, edgecolors="white", label=name)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
    ax.set_axis_off()
    ax.set_title(f"selected vertices (top-{k} per class)")
    return _save(fig, path)


def plot_adjacency(model: AGRNet, spec: LabelSpec, k: int, path: Path) -> Path:
    if model.adjacency is None:
        raise ValueError("this model has no graph reasoning, hence no adjacency")
    a = model.adjacency.detach().cpu().numpy()
    v = a.shape[0]
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(a, cmap="coolwarm", vmin=-np.abs(a).max(), vmax=np.abs(a).max())
    ticks = np.arange(k / 2 - 0.5, v, k)
    ax.set_xticks(ticks, spec.class_names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, spec.class_names, fontsize=7)
    for edge in range(k, v, k):
        ax.axhline(edge - 0.5, color="black", linewidth=0.3)
        ax.axvline(edge - 0.5, color="black", linewidth=0.3)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title("learned adjacency A (rows gather from columns)")
    return _save(fig, path)


def plot_projection(canvas: np.ndarray, output: AGRNetOutput, spec: LabelSpec, k: int, path: Path) -> Path:
    assert output.projection is not None and output.raw_logits is not None
    h1, w1 = output.raw_logits.shape[-2:]
    p = output.projection[0].cpu().numpy().reshape(spec.num_classes, k, h1, w1).sum(1)  # per class
    cols = 4
    rows = int(np.ceil((spec.num_classes + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows))
    axes = axes.ravel()
    axes[0].imshow(canvas)
    axes[0].set_title("input", fontsize=9)
    for cls, name in enumerate(spec.class_names):
        axes[cls + 1].imshow(p[cls], cmap="jet")
        axes[cls + 1].set_title(name, fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle("response of each class's vertices in the projection matrix P")
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def visualize(model: AGRNet, spec: LabelSpec, image: np.ndarray, size: Canvas, out: str | Path) -> list[Path]:
    """All three figures for one image into ``out``."""
    projection = _require_adaptive(model)
    out = prepare_out_dir(out)
    canvas, output = run_on_image(model, image, size)
    return [
        plot_vertices(canvas, output, spec, projection.top_k, out / "vertices.png"),
        plot_adjacency(model, spec, projection.top_k, out / "adjacency.png"),
        plot_projection(canvas, output, spec, projection.top_k, out / "projection.png"),
    ]
