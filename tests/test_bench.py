"""bench.py: every benchmark runs on tiny sizes, prints its table, and rejects bad flags with exit 2."""
import pytest
import torch

import bench
import runfiles




def test_step_runs_every_row_and_rejects_bad_flags(capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sec = bench.step_times("unet1d_tiny", batch_size=2, rounds=1)
    finally:
        torch.set_num_threads(threads)
    assert set(sec) == set(bench.STEP_ROWS) and all(len(s) == 1 and s[0] > 0 for s in sec.values())
    sec, profile_row = bench.step_times("unet1d_tiny", batch_size=2, rounds=2, rows=("tr", "tr +bf16"), chain=2,
                                        profile=True)
    assert all(len(s) == 2 for s in sec.values())
    p = profile_row("tr")  # on the CPU: the operators' summed self time, which one thread cannot exceed
    assert p["kernels"] > 100 and 0 < p["kernel_ms"] <= p["wall_ms"] and len(p["top"]) == 5
    for argv in (["step", "--batch", "3"], ["step", "--model", "resnet"], ["step", "--chain", "0"], [],
                 ["fisher", "--samples", "100"]):
        with pytest.raises(SystemExit) as exc:
            bench.main(argv)
        assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
    for argv, message in ((["step", "--device", "bogus"], "--device must be auto, cpu or cuda[:i], got 'bogus'"),
                          (["unet", "--device", "cuda:7"], "--device cuda:7 but")):
        with pytest.raises(SystemExit) as exc:
            runfiles.run(bench.main, argv)  # as `python bench.py` runs it: before any model is built
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_unet_prints_counts(capsys):
    bench.main(["unet", "--counts-only"])
    out = capsys.readouterr().out
    assert "38,639,107" in out and "83,264,772" in out


def test_unet_times_tiny_and_bad_flags(capsys):
    threads = torch.get_num_threads()
    try:
        bench.main(["unet", "--models", "unet1d_tiny", "unet2d_tiny", "--reps", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # --threads sets a process-wide torch setting
    out = capsys.readouterr().out
    assert "unet1d_tiny: batch 8 x (8, 4): forward+backward" in out and "unet2d_tiny: batch 8" in out
    with pytest.raises(SystemExit) as exc:
        bench.main(["unet", "--reps", "0"])
    assert exc.value.code == 2


def test_fisher_batched_against_loop(capsys):
    """The batched rank-1 estimate and the one-sample loop agree on c* (the bench's own check) on a tiny model."""
    bench.main(["fisher", "--model", "unet1d_tiny", "--samples", "8", "--batch", "4", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "batched estimate" in out and "one-sample loop" in out
    assert float(out.split("relative difference in c*: ")[1].split()[0]) < 1e-4
