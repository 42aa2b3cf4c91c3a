"""Models: any timm Vision Transformer wrapped as an `ExplainableViT` (images in [0, 1] in,
logits out, attention maps recordable); Hugging Face transformers ViT / DeiT (``hf:``) and
torchvision ViTs (``tv:``) converted to the equivalent timm ViT (`fvit.models.backends`, one file
per family). See `fvit.models.wrapper` for which architectures the explanation methods apply to
(Swin: none of the six token-level methods)."""

from fvit.models.loading import LOCAL_MODELS, load_checkpoint, load_model, read_state_dict, tiny_vit
from fvit.models.wrapper import AttentionRecording, ExplainableViT, eval_mode

__all__ = [
    "AttentionRecording",
    "ExplainableViT",
    "LOCAL_MODELS",
    "eval_mode",
    "load_checkpoint",
    "load_model",
    "read_state_dict",
    "tiny_vit",
]
