"""Walk 8c: bad configuration input (overrides, kohya import, resume) found by a bug bash."""

from __future__ import annotations

from lorakit.config.kohya_import import import_kohya_args, import_kohya_files


def _kohya(tmp_path, body: str):
    path = tmp_path / "kohya.toml"
    path.write_text('pretrained_model_name_or_path = "/m/sd_xl_base_1.0.safetensors"\n'
                    'network_module = "networks.lora"\ntrain_data_dir = "/data/img"\n' + body)
    return import_kohya_files(path)


def test_kohya_unet_lr_wins_over_a_later_learning_rate(tmp_path):
    text, mapped, dropped, _ = _kohya(tmp_path, "unet_lr = 1e-4\nnetwork_train_unet_only = true\n"
                                      "learning_rate = 5e-5\n")
    assert "lr = 0.0001" in text and "5e-05" not in text
    assert ("unet_lr", "optimizer.lr") in mapped
    assert dict(dropped)["learning_rate"].startswith("unet_lr is set and wins")


def test_kohya_learning_rate_beside_unet_lr_reaches_the_text_encoder():
    out, skipped = import_kohya_args({"network_module": "networks.lora", "learning_rate": 5e-5, "unet_lr": 1e-4,
                                      "network_train_unet_only": False}, "sdxl")
    assert out["optimizer"]["lr"] == 1e-4 and out["network"]["text_encoder_lr"] == 5e-5
    assert "learning_rate" not in skipped


def test_kohya_empty_values_are_reported_as_unset_not_imported(tmp_path):
    text, mapped, dropped, notes = _kohya(tmp_path, 'vae = ""\nreg_data_dir = ""\nnetwork_dim = 8\n')
    assert "vae" not in text and "reg_dir" not in text
    assert dict(dropped)["vae"].startswith("empty: sd-scripts reads an empty value as not set")
    assert "reg_data_dir" in dict(dropped)
    assert not any("refuses" in n for n in notes)


def test_kohya_ss_gui_json_is_named_as_such_not_invalid_toml(tmp_path):
    import json

    import pytest

    from lorakit.errors import ConfigError

    path = tmp_path / "gui.json"
    path.write_text(json.dumps({"LoRA_type": "Standard", "epoch": 10, "max_resolution": "1024,1024"}))
    with pytest.raises(ConfigError) as exc:
        import_kohya_files(path)
    assert "a JSON file (kohya_ss's GUI config), not an sd-scripts --config_file TOML" in str(exc.value)
    assert "config_lora-*.toml" in str(exc.value) and "invalid TOML" not in str(exc.value)


def test_an_override_without_its_section_names_the_section():
    import pytest

    from lorakit.config.validate import parse_override
    from lorakit.errors import ConfigError

    with pytest.raises(ConfigError, match=r'override "max_steps=3": expected section.key=value; did you mean '
                                          r'training.max_steps=3\?'):
        parse_override("max_steps=3")
    with pytest.raises(ConfigError) as exc:
        parse_override("nosuchkey=3")
    assert str(exc.value) == 'override "nosuchkey=3": expected section.key=value'


def test_plan_shows_a_warmup_longer_than_the_run(tmp_path, capsys, monkeypatch):
    from lorakit.train import planview

    monkeypatch.setattr(planview, "planned", lambda *a, **k: ("(the plan)",))
    run = tmp_path / "run.toml"
    data = tmp_path / "ds" / "10_zkx"
    data.mkdir(parents=True)
    run.write_text(f'[model]\nfamily = "sdxl"\ncheckpoint = "x.safetensors"\n[data]\ndir = "{data.parent}"\n'
                   '[training]\nmax_steps = 4\n[optimizer]\nscheduler = "cosine"\nwarmup_steps = 100\n')
    assert planview.main(str(run), [], "rtx4090") == 0
    out = capsys.readouterr().out
    assert "warning: optimizer.warmup_steps (100) is not shorter than training.max_steps (4)" in out
    assert "the cosine decay never starts" in out


def test_kohya_two_text_encoder_lrs_are_not_narrowed_to_one_silently(tmp_path):
    text, _, _, notes = _kohya(tmp_path, "network_train_unet_only = false\ntext_encoder_lr = [1e-5, 2e-5]\n")
    assert "text_encoder_lr = 1e-05" in text
    assert any(n.startswith("text_encoder_lr gives one lr per text encoder ([1e-05, 2e-05])") and "1e-05 was written"
               in n for n in notes)
    _, _, _, same = _kohya(tmp_path, "network_train_unet_only = false\ntext_encoder_lr = [1e-5, 1e-5]\n")
    assert not any("per text encoder" in n for n in same)


def _finished_run(tmp_path, recorded_steps):
    from types import SimpleNamespace

    (tmp_path / "config.toml").write_text(f"[training]\nmax_steps = {recorded_steps}\n")
    return SimpleNamespace(root=tmp_path, read_status=lambda: {"status": "finished", "step": 2},
                           lora_path=lambda: tmp_path / "r.safetensors")


def test_resume_with_a_lower_max_steps_says_it_came_from_the_command_not_config_toml(tmp_path):
    from types import SimpleNamespace

    import pytest

    from lorakit.errors import TrainingError
    from lorakit.train.resume import check_not_finished

    cfg = SimpleNamespace(training=SimpleNamespace(max_steps=1, max_epochs=None))
    with pytest.raises(TrainingError) as exc:
        check_not_finished(_finished_run(tmp_path, 2), cfg)
    assert "(training.max_steps = 1 given here, below the 2 it trained to; its config.toml says 2)" in str(exc.value)
    assert "an earlier --resume" not in str(exc.value)
    with pytest.raises(TrainingError) as exc:  # config.toml says 1: an earlier resume trained on to 2
        check_not_finished(_finished_run(tmp_path, 1), cfg)
    assert "(training.max_steps = 1 in its config.toml; an earlier --resume trained on to 2)" in str(exc.value)
