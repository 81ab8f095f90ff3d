"""Pre-norm transformer block (ViT / timm `Block`), with optional LayerScale and drop path.

x <- x + DropPath(LS1(Attn(LN1(x)))); x <- x + DropPath(LS2(MLP(LN2(x)))).
Sublayer names follow timm (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.linear1/2`,
`ls1.gamma`, `ls2.gamma`) so converters map torch names one to one.
"""

import keras

from tfbrain.layers.attention import LayerScale, MultiHeadSelfAttention
from tfbrain.layers.drop_path import DropPath
from tfbrain.layers.mlp import MLP
from tfbrain.layers.torch_compat import TORCH_LAYER_NORM_EPSILON


class TransformerBlock(keras.layers.Layer):
    """Pre-norm self-attention block.

    Args:
        hidden_dim: int. Token width C.
        num_heads: int.
        mlp_ratio: float. MLP width = mlp_ratio * C.
        qkv_bias: bool.
        dropout_rate, attention_dropout_rate, drop_path_rate: floats.
        layer_scale_init: optional float; None disables LayerScale.
        layer_norm_epsilon: float (torch's 1e-5 by default; timm ViTs use 1e-6).
        activation: MLP activation, see `tfbrain.layers.mlp.MLP`.

    Call arguments:
        tokens: `(B, N, C)`.
        attention_mask: optional additive mask broadcastable to `(B, heads, N, N)`.
    """

    def __init__(self, hidden_dim, num_heads, mlp_ratio=4.0, qkv_bias=True, dropout_rate=0.0,
                 attention_dropout_rate=0.0, drop_path_rate=0.0, layer_scale_init=None,
                 layer_norm_epsilon=TORCH_LAYER_NORM_EPSILON, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.drop_path_rate = drop_path_rate
        self.layer_scale_init = layer_scale_init
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = activation

    def build(self, tokens_shape):
        dtype = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=dtype,
                                                     name="norm1")
        self.norm1.build(tokens_shape)
        self.attn = MultiHeadSelfAttention(self.hidden_dim, self.num_heads, self.qkv_bias,
                                           self.attention_dropout_rate, self.dropout_rate,
                                           dtype=dtype, name="attn")
        self.attn.build(tokens_shape)
        self.norm2 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=dtype,
                                                     name="norm2")
        self.norm2.build(tokens_shape)
        self.mlp = MLP(self.hidden_dim, int(self.hidden_dim * self.mlp_ratio), self.dropout_rate,
                       activation=self.activation, dtype=dtype, name="mlp")
        self.mlp.build(tokens_shape)
        self.ls1 = self.ls2 = None
        if self.layer_scale_init is not None:
            self.ls1 = LayerScale(self.layer_scale_init, dtype=dtype, name="ls1")
            self.ls1.build(tokens_shape)
            self.ls2 = LayerScale(self.layer_scale_init, dtype=dtype, name="ls2")
            self.ls2.build(tokens_shape)
        self.drop_path = DropPath(self.drop_path_rate, dtype=dtype)

    def call(self, tokens, attention_mask=None, training=False):
        branch = self.attn(self.norm1(tokens), attention_mask=attention_mask, training=training)
        if self.ls1 is not None:
            branch = self.ls1(branch)
        tokens = tokens + self.drop_path(branch, training=training)
        branch = self.mlp(self.norm2(tokens), training=training)
        if self.ls2 is not None:
            branch = self.ls2(branch)
        return tokens + self.drop_path(branch, training=training)

    def compute_output_shape(self, tokens_shape):
        return tokens_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias, "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "drop_path_rate": self.drop_path_rate, "layer_scale_init": self.layer_scale_init,
                "layer_norm_epsilon": self.layer_norm_epsilon, "activation": self.activation}
