"""Neural building blocks: field embeddings, interaction layers and the base CTR models."""

from embdim.nn.block_embedding import BlockFieldEmbedding
from embdim.nn.embedding import FeaturesLinear, FieldEmbedding
from embdim.nn.layers import (
    MLP,
    BiInteraction,
    Dropout,
    FactorizationMachine,
    InnerProduct,
    SelfAttentionLayer,
)
from embdim.nn.models import MODEL_NAMES, ModelOptions, RecModel, build_model, register_model
from embdim.nn.quantized_embedding import ProductQuantizedEmbedding  # registers "dpq", "mgqe"

__all__ = [
    "MLP", "MODEL_NAMES", "BiInteraction", "BlockFieldEmbedding", "Dropout", "FactorizationMachine",
    "FeaturesLinear", "FieldEmbedding", "InnerProduct", "ModelOptions", "ProductQuantizedEmbedding",
    "RecModel", "SelfAttentionLayer",
    "build_model", "register_model",
]
