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
from embdim.nn.masked_embedding import MaskedFieldEmbedding  # registers the 'masked' kind
from embdim.nn.models import MODEL_NAMES, ModelOptions, RecModel, build_model, register_model
from embdim.nn.plan_embedding import PlanEmbedding
from embdim.nn.quantized_embedding import ProductQuantizedEmbedding  # registers "dpq", "mgqe"

__all__ = [
    "MLP", "MODEL_NAMES", "BiInteraction", "BlockFieldEmbedding", "Dropout", "FactorizationMachine",
    "FeaturesLinear", "FieldEmbedding", "InnerProduct", "MaskedFieldEmbedding", "ModelOptions",
    "PlanEmbedding", "ProductQuantizedEmbedding", "RecModel", "SelfAttentionLayer", "build_model",
    "register_model",
]
