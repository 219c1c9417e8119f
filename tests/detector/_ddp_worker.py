"""Run by tests/detector/test_detector_ddp.py under `torch.distributed.run --nproc_per_node=2` (gloo, CPU): the
whole continual fit (feature statistics, two tasks with gradient projection, bases, tests) on procedural data."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small import small  # noqa: E402

from oneformore.data.source import DataSource  # noqa: E402
from oneformore.detector import Detector  # noqa: E402
from oneformore.train.distributed import init_from_environment, is_main  # noqa: E402


def main(out_dir: str) -> None:
    device = init_from_environment("cpu")
    detector = Detector("tiny", small(), device=device, progress=False)
    result = detector.fit([["stripes"], ["disc"]], DataSource(None, image_size=32), out_dir)
    assert (result is not None) == is_main(), "rank 0 alone returns the result"
    # every rank ends with the same weights and the same bases
    state = [v.detach().double().flatten() for v in detector.model.state_dict().values() if v.is_floating_point()]
    state += [u.double().flatten() for u in detector.projector.bases.values()]
    flat = torch.cat(state)
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(g, gathered[0]) for g in gathered), "ranks diverged"
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # No interpreter finalisation: see tests/train/_ddp_worker.py (gloo's worker thread vs a finalising
    # interpreter). Everything the run writes is fsynced already.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
