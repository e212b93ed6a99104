"""MLX's distributed engine as the jobs use it: real ranks started by `mlx.launch` with the ring
backend over loopback (two local processes), against the same code in one plain process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.distributed.launch import free_ports  # the supervisor picks its ports the same way

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "distributed_probe.py"


def launch(nproc: int, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    launcher = Path(sys.executable).parent / "mlx.launch"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(launcher), "--backend", "ring", "-n", str(nproc), "--starting-port",
                           str(free_ports(nproc)), "--", sys.executable, *command],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def results(out: str) -> dict[int, dict]:
    found = [json.loads(line.split("RESULT ", 1)[1]) for line in out.splitlines() if "RESULT " in line]
    return {r["rank"]: r for r in found}


def test_the_collectives_over_two_ranks_give_what_one_process_gets():
    two = launch(2, str(PROBE))
    assert two.returncode == 0, two.stdout + two.stderr
    ranks = results(two.stdout)
    one = subprocess.run([sys.executable, str(PROBE)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    alone = results(one.stdout)[0]
    assert sorted(ranks) == [0, 1] and alone["size"] == 1
    assert ranks[0]["shard"] + ranks[1]["shard"] == alone["shard"] == [0, 1, 2, 3, 4]
    for r in ranks.values():
        assert r["size"] == 2
        assert r["sum"] == 3.0 and r["tree"] == {"a": [2, 4], "b": [2.0]}
        assert r["writer"] == 10.0  # rank 0's value, not the sum of both
        # rows computed by their shard's rank, joined in order: what one process computes alone
        assert r["rows"] == alone["rows"]
        assert r["shards"] == alone["shards"] == list("ABCDE")
        assert r["objects"] == [{"r": 0, "t": "é"}, {"r": 1, "t": "éé"}]


@pytest.mark.parametrize("n, size", [(5, 2), (2, 3), (0, 2), (7, 1)])
def test_shards_cover_every_item_once_in_order(n, size):
    from engine.distributed.world import World, shard

    parts = [list(shard(n, World(r, size))) for r in range(size)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
