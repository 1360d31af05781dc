"""Loading state_dicts and Lightning checkpoints into the reference models."""

import pytest
import torch

from vqvae_fast import configs, reference


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = configs.get_config("tiny")
    return reference.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_state_dict_round_trip_through_file(tmp_path):
    src, dst = tiny_model(0), tiny_model(1)
    path = tmp_path / "model.pt"
    torch.save(src.state_dict(), path)
    report = dst.load_checkpoint(path)
    assert report.ignored == []
    assert len(report.loaded) == len(src.state_dict())
    assert_same_weights(src, dst)


def test_lightning_checkpoint_with_loss_keys(tmp_path):
    src, dst = tiny_model(0), tiny_model(1)
    state = dict(src.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    state["loss.logvar"] = torch.zeros(())
    checkpoint = {"state_dict": state, "epoch": 3, "global_step": 1000}
    before = dict(state)
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    for source in (checkpoint, path):
        report = dst.load_checkpoint(source)
        assert report.ignored == ["loss.discriminator.main.0.weight", "loss.logvar"]
        assert "ignored 2 keys" in str(report)
    assert_same_weights(src, dst)
    assert state.keys() == before.keys(), "the caller's dict must not be modified"


def test_missing_key_is_named():
    src, dst = tiny_model(0), tiny_model(1)
    state = dict(src.state_dict())
    del state["encoder.mid.attn_1.q.weight"]
    reference_weights = dict(dst.state_dict())
    with pytest.raises(ValueError, match=r"missing 1 keys of the model: encoder\.mid\.attn_1\.q\.weight"):
        dst.load_checkpoint(state)
    for k, v in dst.state_dict().items():  # nothing loaded
        assert torch.equal(v, reference_weights[k])


def test_misshaped_key_is_named():
    src, dst = tiny_model(0), tiny_model(1)
    state = dict(src.state_dict())
    state["quantize.embedding.weight"] = torch.zeros(32, 8)
    with pytest.raises(ValueError, match=r"'quantize\.embedding\.weight' has shape \(32, 8\), the model expects \(64, 8\)"):
        dst.load_checkpoint(state)


def test_ignore_keys_and_ckpt_path(tmp_path):
    src = tiny_model(0)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": src.state_dict()}, path)
    cfg = configs.get_config("tiny")
    dst = reference.VQModel(cfg["ddconfig"], None, cfg["n_embed"], cfg["embed_dim"], ckpt_path=str(path))
    assert_same_weights(src, dst)
    with pytest.raises(ValueError, match="missing"):
        reference.load_checkpoint(dst, path, ignore_keys=["quantize."])


def test_bad_source_types():
    with pytest.raises(TypeError, match="path_or_dict"):
        tiny_model().load_checkpoint(42)
