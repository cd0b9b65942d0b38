"""VQGAN tokenizer: images <-> grids of discrete codes."""

from maskgit.tokenizer.model import Discriminator, VectorQuantizer, VQGAN, VQOutput

__all__ = ["VQGAN", "VectorQuantizer", "VQOutput", "Discriminator"]
