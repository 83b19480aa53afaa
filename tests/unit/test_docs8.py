"""Program fixes found by walking the docs as a new user (docs8)."""

from __future__ import annotations

from lorakit.data.report import DataReport


def test_data_report_names_the_batch_size_its_steps_are_counted_with():
    # a kohya dataset TOML with batch_size = 2 and no training.batch_size: 120 samples are 60 steps of batch 2,
    # and the line said "steps/epoch (batch 1): 60"
    r = DataReport(bucket_samples={(0, 64, 64): 120}, group_batch_sizes={0: 2})
    assert "steps/epoch (batch 2): 60" in r.to_table(batch_size=1)
    assert "steps/epoch (batch 4): 30" in DataReport(bucket_samples={(0, 64, 64): 120}).to_table(batch_size=4)
    two = DataReport(bucket_samples={(0, 64, 64): 120, (1, 64, 64): 10}, group_batch_sizes={0: 2})
    assert "steps/epoch (batch 1 / 2): 70" in two.to_table(batch_size=1)
