"""PNG figures the stages write for `dvc plots show`, drawn with matplotlib.

matplotlib is imported inside each function: only stages that draw pay for it.
"""

import io

import numpy as np


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(figsize=(width, height), layout="constrained")


def image_grid(
    rows: list[list[np.ndarray]],
    title: str,
    row_titles: list[str] | None = None,
    cell_titles: list[list[str]] | None = None,
) -> bytes:
    """(H, W, C) uint8 images in rows; short rows leave their cells blank."""
    columns = max([1, *(len(row) for row in rows)])
    figure = new_figure(columns * 1.4, max(1, len(rows)) * 1.5)
    grid = figure.subplots(max(1, len(rows)), columns, squeeze=False)
    for r, row_axes in enumerate(grid):
        for c, axes in enumerate(row_axes):
            axes.set_axis_off()
            if r < len(rows) and c < len(rows[r]):
                image = rows[r][c]
                axes.imshow(image.squeeze(), cmap="gray" if image.shape[2] == 1 else None)
                if cell_titles:
                    axes.set_title(cell_titles[r][c], fontsize=7)
        if row_titles and r < len(row_titles):
            row_axes[0].set_title(row_titles[r], loc="left", fontsize=9)
    figure.suptitle(title)
    return png(figure)


def message(text: str) -> bytes:
    """A figure that says why the real one could not be drawn."""
    figure = new_figure(6, 1.2)
    figure.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return png(figure)


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    return buffer.getvalue()
