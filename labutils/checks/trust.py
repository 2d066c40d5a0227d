"""Notebook 06's exercise: the pointing game (does a map's maximum fall on the object?)."""

from __future__ import annotations

from typing import Optional

import torch

from ..exercise import Case, Exercise
from ..sanity import pointing_game
from ._common import diagnosis, pick

NOTEBOOK = "06_can_you_trust_the_map.ipynb"


def pointing_cases(g: Optional[torch.Generator]) -> list[Case]:
    """Maps whose maxima sit inside, outside and right on the edge of the boxes; square and non-square."""
    cases = []
    for i, (n, h, w, tolerance) in enumerate([(8, 64, 64, 0), (12, 48, 80, 0), (12, 48, 80, 3)]):
        gen = torch.Generator().manual_seed(pick(g, 90 + i, 100, 10_000))
        maps = torch.rand(n, h, w, generator=gen) * 0.5
        tops = torch.randint(0, min(h, w) - 12, (n,), generator=gen)
        lefts = tops.clone()  # boxes on the diagonal: a box read as (left, top, ...) still overlaps it
        boxes = torch.stack([tops, lefts, tops + 8, lefts + 10], dim=1).float()  # (top, left, bottom, right)
        offsets = torch.tensor([[0, 0], [8, 10], [9, 5], [4, 11], [-1, 0], [4, 4], [2, -2], [11, 13]])
        for j in range(n):  # the peak: inside, on the edge (inclusive), just outside, further out
            dr, dc = offsets[j % len(offsets)].tolist()
            r, c = max(0, min(h - 1, int(tops[j]) + dr)), max(0, min(w - 1, int(lefts[j]) + dc))
            maps[j, r, c] = 1.0
        cases.append(Case(f"{n} maps of {h} x {w}, boxes of 9 x 11 pixels, tolerance {tolerance}",
                          (maps, boxes, tolerance)))  # fmt: skip
    return cases


def _hits(rows: torch.Tensor, cols: torch.Tensor, boxes: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Whether each (row, col) falls in its box (top, left, bottom, right), grown by ``tolerance``, edges inclusive."""
    top, left, bottom, right = boxes.unbind(1)
    return (rows >= top - tolerance) & (rows <= bottom + tolerance) & (cols >= left - tolerance) & \
        (cols <= right + tolerance)


def _pointing(case: Case, got: object) -> Optional[str]:
    maps, boxes, tolerance = case.args
    expected = pointing_game(maps, boxes, tolerance)
    if type(got) is not torch.Tensor:
        return f"wrong type: return a torch.Tensor of bools, one per map, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"wrong shape: one hit per map, {tuple(expected.shape)}, got {tuple(got.shape)}"
    if got.dtype != torch.bool:
        return f"wrong dtype: return bools (a comparison gives them), got {got.dtype}"
    if torch.equal(got, expected):
        return None
    transposed = boxes[:, [1, 0, 3, 2]]
    peak = maps.flatten(1).argmax(dim=1)
    h, w = maps.shape[-2:]
    mistakes = [
        (_hits(peak // h, peak % h, boxes, tolerance), f"the peak's row and column are wrong: the maps are {h} x {w} "
         "(height x width), so a flat index counts whole rows of width values; you divided by the height"),

        (pointing_game(maps, transposed, tolerance), "rows and columns swapped (the peak's, or the box's): a box is "
         "(top, left, bottom, right): rows between top and bottom, columns between left and right"),
        (pointing_game(maps, boxes, 0), "you ignored the tolerance: grow the box by `tolerance` pixels on every side"),
        (pointing_game(maps, boxes + torch.tensor([0.0, 0.0, -1.0, -1.0]), tolerance), "the boxes are inclusive: "
         "a peak on the bottom row or the right column is inside (<=, not <)"),
        (pointing_game(-maps, boxes, tolerance), "you took the minimum of the map: the pointing game uses its maximum"),
    ]
    for wrong, message in mistakes:
        if torch.equal(got, wrong):
            return message
    first = int((got != expected).nonzero()[0])
    return f"{int((got != expected).sum())} of {len(expected)} hits are wrong; the first is map {first}: expected " \
           f"{bool(expected[first])}, got {bool(got[first])}"  # fmt: skip


POINTING_GAME = Exercise(
    "pointing_game", NOTEBOOK, "my_pointing_game", (), pointing_cases, diagnosis("my_pointing_game", _pointing),
    reference="labutils.sanity:pointing_game",
)

VERIFIED = {
    "pointing_game": "the hits match labutils.sanity.pointing_game on square and non-square maps, peaks inside, on "
    "the edge of and just outside the boxes, with and without a tolerance",
}
