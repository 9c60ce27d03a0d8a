"""A real but tiny encoder for tests: a seeded 2-layer BERT and a WordPiece tokenizer trained on the texts,
saved as an encoder directory by `hybridir.encoder_dir.save_encoder`."""
from __future__ import annotations

from pathlib import Path

SPEC = {"query_prefix": "query: ", "passage_prefix": "passage: ", "pooling": "mean"}
# train settings of params.yaml that a 2-layer encoder cannot take (the default freezes e5-small's lower 6 of 12)
TINY_TRAIN = {"freeze_layers": 0}


def make_tiny_encoder(texts: list[str], out: Path, vocab_size: int = 3000) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from hybridir.model.encoder_dir import save_encoder

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                 ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    save_encoder(BertModel(config), fast, out, SPEC)
    return out
