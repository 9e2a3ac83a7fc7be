"""SmolVLM (``smolvlm``): Idefics3's spans and geometry.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.idefics3 import build_idefics3, geometry, markers
from vlmnb.engine.tinykit import at_reference_sizes


def build_tiny(seed: int, view: int):
    """A tiny random SmolVLM."""
    return build_idefics3(seed, view, smol=True)


def reference_sizes(config, processor):
    """SmolVLM: 512 px crops plus a global view, 16 px patches, pixel shuffle by 4 (64 tokens per crop)."""
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor

    config, tok, template = at_reference_sizes(config, processor, 512, 16)
    config.scale_factor = 4
    ip = SmolVLMImageProcessor(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512})
    return config, SmolVLMProcessor(ip, tok, video_processor=processor.video_processor, image_seq_len=64,
                                    chat_template=template)


FAMILY = Family(name="smolvlm", geometry=geometry, build_tiny=build_tiny, markers=markers,
                hub_ids=("HuggingFaceTB/SmolVLM2-2.2B-Instruct", "HuggingFaceTB/SmolVLM-256M-Instruct"),
                reference_sizes=reference_sizes)
