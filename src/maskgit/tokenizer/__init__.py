"""VQGAN tokenizer: images <-> grids of discrete codes."""

from maskgit.tokenizer.model import VQGAN, Discriminator, VectorQuantizer, VQOutput

__all__ = ["VQGAN", "VectorQuantizer", "VQOutput", "Discriminator"]
