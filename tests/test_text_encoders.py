"""The real loading path: save_pretrained of tiny random configs, loaded back by slot."""
import json

import pytest
import torch

from moviegen.config import TextConfig, TextEncoderConfig
from moviegen.models.transformer import build_model, resolve_model_args
from moviegen.config import ModelConfig
from moviegen.models.text_encoders import TextEncoders, drop_captions, null_text
from moviegen.models.tokenizer import ByteTokenizer, fps_prefix
from moviegen.flow import per_sample_draws

transformers = pytest.importorskip("transformers")


def save_t5(path, with_byt5_tokenizer: bool):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=4)
    T5EncoderModel(cfg).save_pretrained(path)
    if with_byt5_tokenizer:
        ByT5Tokenizer().save_pretrained(path)


def save_clip(path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    torch.manual_seed(0)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    tok.save_pretrained(path)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=24, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=40,
                         eos_token_id=1, bos_token_id=0, pad_token_id=1)
    CLIPTextModel(cfg).save_pretrained(path)


def test_three_slots_load_from_local_dirs(tmp_path):
    for name in ("ul2", "byt5", "metaclip"):
        (tmp_path / name).mkdir()
    save_t5(tmp_path / "ul2", with_byt5_tokenizer=True)
    save_t5(tmp_path / "byt5", with_byt5_tokenizer=False)  # byte tokenizer fallback
    save_clip(tmp_path / "metaclip")
    cfg = TextConfig(encoders=[
        TextEncoderConfig(name="ul2", path=str(tmp_path / "ul2"), max_length=20),
        TextEncoderConfig(name="byt5", path=str(tmp_path / "byt5"), max_length=24),
        TextEncoderConfig(name="metaclip", path=str(tmp_path / "metaclip"), max_length=16)])
    enc = TextEncoders(cfg)
    assert enc.out_dims == {"ul2": 32, "byt5": 32, "metaclip": 24}
    captions = [fps_prefix("a red circle moves", 16), "hi"]
    embeds, masks = enc.encode(captions)
    assert embeds["ul2"].shape == (2, 20, 32) and embeds["metaclip"].shape == (2, 16, 24)
    assert masks["byt5"].dtype == torch.bool
    assert masks["byt5"][0].sum() == 24  # 25 bytes + EOS, truncated to max_length
    assert masks["ul2"][0].sum() == 20
    assert masks["byt5"][1].sum() == 3
    # the loaded weights are the saved ones: compare with a direct load
    from transformers import T5EncoderModel
    direct = T5EncoderModel.from_pretrained(tmp_path / "ul2")
    ids, m = enc.encoders["ul2"].tokenize(captions)
    ref = direct(input_ids=ids, attention_mask=m.long()).last_hidden_state
    assert torch.allclose(ref, embeds["ul2"], atol=1e-6)
    for p in enc.parameters():
        assert not p.requires_grad  # frozen
    # the transformer takes all three through its own Linear + LayerNorm
    args = resolve_model_args(ModelConfig(), enc.out_dims)
    model = build_model(args)
    text_BLD, mask_BL = model.embed_text(embeds, masks)
    assert text_BLD.shape == (2, 20 + 24 + 16, 64) and mask_BL.shape == (2, 60)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    save_clip(tmp_path)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json"):
        (tmp_path / f).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        TextEncoders(TextConfig(encoders=[TextEncoderConfig(name="metaclip", path=str(tmp_path))]))


def test_builtin_encoder_is_deterministic_and_round_trips(tmp_path):
    cfg = TextConfig()
    a, b = TextEncoders(cfg), TextEncoders(cfg)
    ea, ma = a.encode(["FPS-16 a blue blob"])
    eb, _ = b.encode(["FPS-16 a blue blob"])
    assert torch.equal(ea["byt5"], eb["byt5"])
    paths = a.save_builtin(str(tmp_path))
    c = TextEncoders(TextConfig(encoders=[TextEncoderConfig(name="byt5", path=paths["byt5"], max_length=64)]))
    ec, mc = c.encode(["FPS-16 a blue blob"])
    assert torch.allclose(ec["byt5"], ea["byt5"], atol=1e-6) and torch.equal(mc["byt5"], ma["byt5"])


def test_byte_tokenizer():
    tok = ByteTokenizer(8)
    ids, mask = tok(["ab", "abcdefghijkl"])
    assert ids[0, :3].tolist() == [ord("a") + 3, ord("b") + 3, 1] and mask[0].sum() == 3
    assert mask[1].all() and ids[1, -1] == 1  # truncated, EOS kept
    assert tok.decode(ids[0]) == "ab"
    assert fps_prefix("x", 24.0) == "FPS-24 x"


def test_caption_dropout_and_null_text():
    masks = {"a": torch.ones(1000, 4, dtype=torch.bool), "b": torch.ones(1000, 2, dtype=torch.bool)}
    _, _, keep = per_sample_draws((1000, 1, 1, 1, 1), list(range(1000)), drop_prob=0.1)
    dropped = drop_captions(masks, keep)
    gone_a = ~dropped["a"].any(-1)
    assert torch.equal(gone_a, ~dropped["b"].any(-1))  # a sample is dropped in every slot
    assert torch.equal(gone_a, ~keep) and dropped["a"][keep].all()  # the others keep theirs
    assert 60 < gone_a.sum() < 140
    assert not null_text(masks)["a"].any()
