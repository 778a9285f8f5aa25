"""CLIP parity against transformers' CLIPModel on a tiny random openai-layout checkpoint: image and text
embeddings and logits_per_image within 1e-4, both pooling rules (first eos_token_id; legacy eos 2 = argmax id),
padded text, and the save_pretrained round trip."""
import pytest
import torch

from model import CLIPModel
from model_fixtures import make_hf_clip, pixels



@pytest.fixture(autouse=True)
def _no_grad():
    """Inference-only tests; scoped to this module (a global set_grad_enabled would leak into other files)."""
    with torch.no_grad():
        yield


def texts(eos: int):
    # right-padded (pad 0) like a CLIP tokenizer; ids stay below the eos in the legacy case so argmax finds it
    rows = [[1, 7, 9, 4, eos], [1, 5, eos], [1, 8, 6, 9, 5, 7, 4, eos]]
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    return ids, mask


@pytest.mark.parametrize("eos", [3, 99, 2], ids=["eos3", "eos99", "legacy-eos2"])
def test_clip_parity(tmp_path, eos):
    hf = make_hf_clip(str(tmp_path), eos_token_id=eos)
    ours = CLIPModel.from_pretrained(tmp_path)
    assert ours.config.text.eos_token_id == eos
    ids, mask = texts(99 if eos == 2 else eos)  # legacy rule: pool at the largest id, 99 = end of text
    px = pixels(2)
    img = hf.get_image_features(pixel_values=px).pooler_output
    txt = hf.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    logits = hf(input_ids=ids, pixel_values=px, attention_mask=mask).logits_per_image
    assert (ours.encode_image(px) - img).abs().max() <= 1e-4
    assert (ours.encode_text(ids, mask) - txt).abs().max() <= 1e-4
    ours_logits = ours(ids, px, mask)
    assert ours_logits.shape == (2, 3) and (ours_logits - logits).abs().max() <= 1e-4
    assert logits.std() > 0.1  # the scores actually discriminate, so the comparison means something


def test_text_without_eos_is_an_error(tmp_path):
    make_hf_clip(str(tmp_path), eos_token_id=3)
    ours = CLIPModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="eos_token_id=3"):
        ours.encode_text(torch.tensor([[1, 5, 6]]))


def test_clip_round_trip(tmp_path):
    from transformers import CLIPModel as HFCLIP
    hf = make_hf_clip(str(tmp_path / "a"))
    ours = CLIPModel.from_pretrained(tmp_path / "a")
    ours.save_pretrained(tmp_path / "b")
    back = HFCLIP.from_pretrained(tmp_path / "b").eval()
    ids, mask = texts(3)
    px = pixels(2)
    assert torch.equal(back(input_ids=ids, pixel_values=px, attention_mask=mask).logits_per_image,
                       hf(input_ids=ids, pixel_values=px, attention_mask=mask).logits_per_image)
    again = CLIPModel.from_pretrained(tmp_path / "b")
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_random_init_trains_from_scratch():
    """A from-scratch CLIP (the toy world) builds from a config alone and gives finite scores with gradients."""
    from model import CLIPConfig
    from model.config import CLIPTextConfig, VisionConfig
    cfg = CLIPConfig(vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, image_size=32, patch_size=8),
                     text=CLIPTextConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=3),
                     projection_dim=16)
    m = CLIPModel(cfg)
    ids, mask = texts(3)
    with torch.enable_grad():
        loss = m(ids, pixels(2), mask).logsumexp(-1).mean()
        loss.backward()
    assert torch.isfinite(loss) and m.text_projection.weight.grad.abs().sum() > 0
