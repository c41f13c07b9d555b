"""Public face of HF checkpoint conversion (design.md): ``load_hf`` and ``save_hf``.

Conversion lives in `lladax.store.convert`; outside tools and notebooks import it from here.
"""

from lladax.store.convert import load_hf, save_hf

__all__ = ["load_hf", "save_hf"]
