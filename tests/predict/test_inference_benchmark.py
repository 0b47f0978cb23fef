"""``python -m benchmarks.inference`` runs (a tiny model and size) and prints both tables; its planted gates
send the images to the depths they were fitted to."""

from __future__ import annotations

from benchmarks import inference


def test_planted_depths_average_the_budget():
    assert inference.planted_depths(3, 8, [2, 3, 4, 5, 6]) == [2, 3, 4, 2, 3, 4, 2, 3]
    assert inference.planted_depths(6, 3, [2, 3, 4, 5, 6]) == [5, 6, 6]


def test_the_benchmark_prints_its_tables(capsys):
    assert inference.main(["--small", "--backbone", "resnet18", "--height", "64", "--width", "96", "--images", "3",
                           "--batches", "1,3"]) == 0
    out = capsys.readouterr().out
    assert out.count("| variant | mean depth | img/s (wall) |") == 2 and "| depth 6 | 6.00 |" in out
    assert "| budget 3 | 3.00 |" in out and "| budget 5 | 5.00 |" in out  # the planted gates chose as fitted
    assert "| variant | trunk s | encoder s |" in out
