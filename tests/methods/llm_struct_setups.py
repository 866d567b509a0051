"""Tiny language models and calibration batches for the llm-width / llm-depth tests (imported by name)."""
import torch

import prunekit as pk
from prunekit.methods import RunContext, get_method, load_all

VOCAB, SEQ = 64, 16


def text_batches(n: int = 2, batch: int = 8, seed: int = 0) -> list:
    """``n`` batches of synthetic-text token sequences ``(x [B,T], y = x shifted)``."""
    b = pk.data.load("synthetic-text", vocab_size=VOCAB, seq_len=SEQ, n_train=2 * n * batch, n_test=batch, seed=seed,
                     val_fraction=0.0, batch_size=batch)
    return b.calib(n, batch)


def gpt(n_layer: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return pk.models.create("gpt-tiny", num_classes=VOCAB, in_channels=1, input_size=SEQ, n_layer=n_layer)


def llama(n_layer: int = 2, seed: int = 0):
    """``hf:llama-tiny``: 4 query heads in 2 key-value groups (grouped-query attention), FFN 172."""
    torch.manual_seed(seed)
    # a 1000-token vocabulary (the tests' targets were set with it), ids drawn below VOCAB
    return pk.models.create("hf:llama-tiny", num_classes=VOCAB, in_channels=1, input_size=SEQ,
                            num_hidden_layers=n_layer, vocab_size=1000)


def logits(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


def run(mid: str, model, calib, target: str = "macs=0.7", train=None, **options):
    load_all()
    spec = get_method(mid)
    ctx = RunContext(model=model, example_inputs=calib[0][0][:1], target=target, calib=calib, train_data=train,
                     options=options)
    return spec.run(ctx)


def state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, before: dict) -> bool:
    after = model.state_dict()
    return set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def not_a_language_model() -> tuple:
    """A LeNet-5 and one image batch: what the language-model methods must refuse."""
    torch.manual_seed(0)
    return pk.models.create("lenet5"), [(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))]
