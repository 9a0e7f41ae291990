"""The throughput graph's scale and labels, and that it paints any samples."""

from __future__ import annotations

import math

import pytest

from app.ui.graph import ThroughputGraph, nice_ceiling, span_label


@pytest.mark.parametrize(("value", "top"), [(0, 1), (-3, 1), (math.nan, 1), (0.7, 1), (1.2, 2), (2.2, 2.5), (3, 5), (47.9, 50), (51, 100), (1000, 1000)])
def test_nice_ceiling(value: float, top: float) -> None:
    assert nice_ceiling(value) == pytest.approx(top)


def test_span_label() -> None:
    assert span_label(30) == "30 s ago"
    assert span_label(120) == "2 min ago"


@pytest.mark.parametrize("samples", [(), (5.0,), tuple(float(i) for i in range(200))])
def test_graph_paints(qtbot, samples: tuple[float, ...]) -> None:  # noqa: ANN001 - pytest-qt fixture
    graph = ThroughputGraph()
    qtbot.addWidget(graph)
    graph.resize(420, 130)
    graph.set_samples(samples)
    image = graph.grab().toImage()
    assert image.width() == 420 and not image.isNull()
