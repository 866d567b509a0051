"""Tiny language models and calibration batches shared by the one-shot LLM method tests
(test_magnitude_llm.py, test_wanda.py, test_sparsegpt.py). A plain module: ``from llm_setups import ...``."""
import torch

import prunekit as pk
from prunekit.criteria.sequential import block_linears, decoder_blocks
from prunekit.methods import RunContext, get_method, load_all

VOCAB, SEQ = 64, 16


def tiny_lm(name="gpt-tiny", seed=0):
    """An untrained ``gpt-tiny`` (2 blocks, d=64) or ``hf:llama-tiny`` (2 layers, GQA 4/2 heads), seed ``seed``."""
    torch.manual_seed(seed)
    return pk.models.create(name, num_classes=VOCAB, in_channels=1, input_size=SEQ)


def token_calib(n=2, batch=8, seed=0, vocab=VOCAB):
    """``n`` batches of random token ids ``[batch, SEQ]`` with their next-token targets."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, (batch, SEQ), generator=g), torch.randint(0, vocab, (batch, SEQ), generator=g))
            for _ in range(n)]


def run_llm(mid, model, calib, target="sparsity=0.5", ignore=(), **options):
    load_all()
    spec = get_method(mid)
    ctx = RunContext(model=model, example_inputs=torch.zeros(1, SEQ, dtype=torch.long), target=target, calib=calib,
                     ignore=tuple(ignore), options=options)
    return spec.run(ctx)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def block_weights(model):
    """``{fqn: weight}`` of the Linear layers inside the decoder blocks."""
    path, blocks = decoder_blocks(model)
    return {f"{f}.weight": m.weight for i, b in enumerate(blocks) for f, m in block_linears(b, f"{path}.{i}").items()}


def outside_weights(model):
    """The parameters outside the decoder blocks (embeddings, final norm, LM head)."""
    path, _ = decoder_blocks(model)
    return {k: v.detach().clone() for k, v in model.named_parameters() if not k.startswith(path + ".")}
