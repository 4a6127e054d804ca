"""DETR's encoder-decoder transformer: positional embeddings added to queries and keys in every
layer, post-norm by default (pre-norm optional), every decoder layer's output returned."""

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _with_pos(x, pos):
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """Self-attention + FFN over the flattened feature map; tensors are (B, HW, C)."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _attn(self, x, pos, key_padding_mask):
        q = k = _with_pos(x, pos)
        return self.self_attn(q, k, x, key_padding_mask=key_padding_mask, need_weights=False)[0]

    def _ffn(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, src, key_padding_mask=None, pos=None):
        if self.normalize_before:
            src = src + self.dropout(self._attn(self.norm1(src), pos, key_padding_mask))
            return src + self.dropout(self._ffn(self.norm2(src)))
        src = self.norm1(src + self.dropout(self._attn(src, pos, key_padding_mask)))
        return self.norm2(src + self.dropout(self._ffn(src)))


class TransformerDecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the memory, FFN; tensors are (B, N, C)."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _self(self, x, query_pos):
        q = k = _with_pos(x, query_pos)
        return self.self_attn(q, k, x, need_weights=False)[0]

    def _cross(self, x, memory, key_padding_mask, pos, query_pos):
        return self.cross_attn(
            _with_pos(x, query_pos),
            _with_pos(memory, pos),
            memory,
            key_padding_mask=key_padding_mask,
            need_weights=False,
        )[0]

    def _ffn(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        mask = memory_key_padding_mask
        if self.normalize_before:
            tgt = tgt + self.dropout(self._self(self.norm1(tgt), query_pos))
            tgt = tgt + self.dropout(self._cross(self.norm2(tgt), memory, mask, pos, query_pos))
            return tgt + self.dropout(self._ffn(self.norm3(tgt)))
        tgt = self.norm1(tgt + self.dropout(self._self(tgt, query_pos)))
        tgt = self.norm2(tgt + self.dropout(self._cross(tgt, memory, mask, pos, query_pos)))
        return self.norm3(tgt + self.dropout(self._ffn(tgt)))


class TransformerEncoder(nn.Module):
    def __init__(self, layer, num_layers, norm=None):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(self, src, key_padding_mask=None, pos=None):
        for layer in self.layers:
            src = layer(src, key_padding_mask=key_padding_mask, pos=pos)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    """Returns the normalised output of every layer, stacked: (L, B, N, C)."""

    def __init__(self, layer, num_layers, norm):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key_padding_mask, pos=pos, query_pos=query_pos)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class Transformer(nn.Module):
    """
    DETR's transformer. The encoder reads the flattened feature map (+ sine positions at every
    layer); the decoder starts from zeros and adds the learned query embeddings at every layer.
    """

    def __init__(
        self,
        d_model=256,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=2048,
        dropout=0.1,
        normalize_before=False,
    ):
        super().__init__()
        enc_layer = TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout, normalize_before
        )
        dec_layer = TransformerDecoderLayer(
            d_model, nhead, dim_feedforward, dropout, normalize_before
        )
        # pre-norm leaves the encoder output un-normalised: a final LayerNorm, as in DETR
        enc_norm = nn.LayerNorm(d_model) if normalize_before else None
        self.encoder = TransformerEncoder(enc_layer, num_encoder_layers, enc_norm)
        self.decoder = TransformerDecoder(dec_layer, num_decoder_layers, nn.LayerNorm(d_model))
        self.d_model = d_model
        self.nhead = nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, query_embed, pos):
        """
        Args:
            src: (B, C, H, W) projected backbone features.
            mask: (B, H, W) bool, True on padding.
            query_embed: (N, C) learned query positions.
            pos: (B, C, H, W) positional encoding of ``src``.
        Returns:
            hs: (L, B, N, C) decoder outputs of every layer.
            memory: (B, C, H, W) encoder output.
        """
        b, c, h, w = src.shape
        src = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        key_padding_mask = mask.flatten(1)
        query_pos = query_embed.unsqueeze(0).expand(b, -1, -1)
        memory = self.encoder(src, key_padding_mask=key_padding_mask, pos=pos)
        tgt = torch.zeros_like(query_pos)
        hs = self.decoder(tgt, memory, key_padding_mask, pos=pos, query_pos=query_pos)
        return hs, memory.transpose(1, 2).reshape(b, c, h, w)
